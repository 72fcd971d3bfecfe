// The servers a workload is run against, each started fresh as a child process.
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { startServer, stopServer, childPids } from './proc.mjs'
import { startNginx, nginxAvailable } from './nginx.mjs'
import { centrifugoAvailable } from '../workloads/cluster-fanout.mjs'
import { centrifugoBinary, centrifugoReady } from './centrifugo.mjs'

const here = (path) => fileURLToPath(new URL(path, import.meta.url))

function nodeServer(name, script, requirement, extraEnv = () => ({})) {
  return {
    name,
    available: () => (requirement() ? true : `missing ${requirement.what}`),
    async start(env) {
      const { child, port } = await startServer(process.execPath, [here(script)], { env: { ...env, ...extraEnv() } })
      return { port, pids: () => [child.pid, ...childPids(child.pid)], stop: () => stopServer(child) }
    },
  }
}

const built = Object.assign(() => existsSync(here('../../index.js')) && existsSync(here('../../binding.js')), {
  what: 'the built package (run npm install at the repository root)',
})
const wsInstalled = Object.assign(() => existsSync(here('../node_modules/ws')), {
  what: 'benchmark dependencies (npm install --prefix benchmark)',
})
const fastifyInstalled = Object.assign(() => existsSync(here('../node_modules/fastify')), {
  what: 'benchmark dependencies (npm install --prefix benchmark)',
})

const socketioInstalled = () => existsSync(here('../node_modules/socket.io')) && existsSync(here('../node_modules/@socket.io/redis-adapter'))

export const PEERS = [
  nodeServer('floodgate', '../servers/floodgate.mjs', built),
  nodeServer('node-http', '../servers/node-http.mjs', () => true),
  // The observability A/B (`--observe-ab`): the same floodgate server with histograms and
  // rejection events off, and with its access log written to a file; nginx with its own.
  { ...nodeServer('floodgate-nometrics', '../servers/floodgate.mjs', built, () => ({ METRICS: '0' })), base: 'floodgate' },
  {
    name: 'floodgate-accesslog',
    base: 'floodgate',
    available: () => (built() ? true : `missing ${built.what}`),
    async start(env) {
      const dir = mkdtempSync(join(tmpdir(), 'floodgate-log-'))
      const server = await nodeServer('floodgate-accesslog', '../servers/floodgate.mjs', built, () => ({ ACCESS_LOG: join(dir, 'access.log') })).start(env)
      return { ...server, stop: () => server.stop().finally(() => rmSync(dir, { recursive: true, force: true })) }
    },
  },
  nodeServer('fastify', '../servers/fastify.mjs', fastifyInstalled),
  {
    name: 'nginx',
    available: () => nginxAvailable() || 'nginx is not installed',
    start: (env) => startNginx(env.ROOT, env.TLS_CERT && { cert: env.TLS_CERT, key: env.TLS_KEY, http2: env.TLS_H2 === '1' }),
  },
  {
    name: 'nginx-accesslog',
    base: 'nginx',
    available: () => nginxAvailable() || 'nginx is not installed',
    start: (env) => startNginx(env.ROOT, env.TLS_CERT && { cert: env.TLS_CERT, key: env.TLS_KEY, http2: env.TLS_H2 === '1' }, { accessLog: true }),
  },
  nodeServer('ws', '../servers/ws.mjs', wsInstalled),
  {
    // Socket.IO 4 + @socket.io/redis-adapter, for the cluster workloads only: they start their
    // own instances (and Redis), so nothing is started here.
    name: 'socket.io',
    available: () => socketioInstalled() || 'missing benchmark dependencies (npm install --prefix benchmark)',
    start: async () => ({ port: 0, pids: () => [], stop: async () => {} }),
  },
  {
    // Centrifugo v6, one instance (memory engine): the event-stream and fan-out peer. Its pids are
    // Centrifugo's own, not its Node front's.
    name: 'centrifugo-1',
    available: centrifugoReady,
    async start(env) {
      const { child, port } = await startServer(process.execPath, [here('../servers/centrifugo.mjs')], { env: { ...env, CENTRIFUGO: centrifugoBinary() } })
      return { port, pids: () => childPids(child.pid), stop: () => stopServer(child) }
    },
  },
  {
    // Centrifugo v6 (Redis engine), for cluster-fanout only, started by the workload likewise.
    name: 'centrifugo',
    available: () => centrifugoAvailable(),
    start: async () => ({ port: 0, pids: () => [], stop: async () => {} }),
  },
]
