// Cross-instance fan-out: 3 instances with `cluster` on one redis-server, 10,000 WebSocket
// subscribers spread over them (quick: 1,000), a publisher on the first instance at 100 events/s
// (quick: 1,000/s) for 5 s (quick: 2 s), so two thirds of every event crosses Redis. Delivered
// share, p50/p99 publish-to-receive latency (the worst instance's), and the CPU of the three
// servers and Redis; delivered messages per CPU-second is the primary figure. Peer: Socket.IO 4
// with @socket.io/redis-adapter (servers/socketio-cluster.mjs), the same load client speaking
// Engine.IO (`--socketio 1`), and Centrifugo v6 with its Redis engine
// (servers/centrifugo-cluster.mjs, its JSON client protocol: `--centrifugo 1`) when built
// (`go install github.com/centrifugal/centrifugo/v6@v6.9.1`).
import { fileURLToPath } from 'node:url'
import { wsLoad, SOURCES } from '../lib/ws-load.mjs'
import { existsSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { startServer, stopServer, cpuSeconds, childPids } from '../lib/proc.mjs'
import { startRedis, redisAvailable } from '../lib/redis.mjs'

const SERVERS = {
  floodgate: { script: '../servers/floodgate-cluster.mjs', path: '/ws/bench', protocol: {} },
  'socket.io': { script: '../servers/socketio-cluster.mjs', path: '/socket.io/?EIO=4&transport=websocket', protocol: { socketio: 1 } },
  centrifugo: { script: '../servers/centrifugo-cluster.mjs', path: '/connection/websocket', protocol: { centrifugo: 1 } },
}
const centrifugoBinary = process.env.CENTRIFUGO || join(homedir(), 'go', 'bin', 'centrifugo')
export const centrifugoAvailable = () =>
  existsSync(centrifugoBinary) || 'no Centrifugo (go install github.com/centrifugal/centrifugo/v6@v6.9.1, or set CENTRIFUGO)'
const INSTANCES = 3

export default {
  name: 'cluster-fanout',
  fixtures: {},
  peers: ['floodgate', 'socket.io', 'centrifugo'],
  async run({ quick, warmup, peer }) {
    if (warmup) return {}
    const available = redisAvailable()
    if (available !== true) throw new Error(available)
    const sockets = quick ? 1000 : 10_000
    const rate = quick ? 1000 : 100
    const seconds = quick ? 2 : 5
    const { script, path, protocol } = SERVERS[peer]
    const redis = await startRedis()
    const servers = []
    try {
      for (let i = 0; i < INSTANCES; i++) {
        servers.push(await startServer(process.execPath, [fileURLToPath(new URL(script, import.meta.url))], { env: { REDIS: redis.url } }))
      }
      const each = Math.floor(sockets / INSTANCES)
      const expect = each * rate * seconds
      // Centrifugo's clients connect to Centrifugo itself, not to the Node front the harness talks to.
      const wsPort = async (port) => (peer === 'centrifugo' ? (await (await fetch(`http://127.0.0.1:${port}/api/ws-port`)).json()).port : port)
      const wsPorts = await Promise.all(servers.map(({ port }) => wsPort(port)))
      const loads = await Promise.all(
        wsPorts.map((port) =>
          wsLoad(
            'fanout',
            { url: `ws://127.0.0.1:${port}${path}`, connections: each, sources: SOURCES, expect, 'idle-ms': 2000, 'timeout-ms': (seconds + 60) * 1000, ...protocol },
            { timeout: (seconds + 120) * 1000 },
          ),
        ),
      )
      const connected = await Promise.all(loads.map((load) => load.connected))
      if (connected.some((n) => n < each)) throw new Error(`subscribed: ${connected.join(', ')} of ${each} each`)
      // Every instance ready before the first event: floodgate subscribed to `bench` in Redis,
      // Socket.IO with every socket joined to its namespace.
      const ready = async (port) =>
        peer === 'floodgate'
          ? (await (await fetch(`http://127.0.0.1:${port}/api/stats`)).json()).cluster.patterns === 1
          : peer === 'centrifugo'
            ? (await (await fetch(`http://127.0.0.1:${port}/api/count`)).json()).subscribers === each * INSTANCES
            : (await (await fetch(`http://127.0.0.1:${port}/api/count`)).json()).sockets === each
      for (const { port } of servers) {
        for (let i = 0; i < 250 && !(await ready(port)); i++) await new Promise((resolve) => setTimeout(resolve, 20))
      }
      // Each server with its children (Centrifugo under its Node front), and Redis.
      const pids = () => [...servers.flatMap(({ child }) => [child.pid, ...childPids(child.pid)]), redis.pid]
      const before = cpuSeconds(pids())
      const response = await fetch(`http://127.0.0.1:${servers[0].port}/api/publish?rate=${rate}&seconds=${seconds}`)
      if (!response.ok) throw new Error(`/api/publish answered ${response.status}`)
      const results = await Promise.all(loads.map((load) => load.result))
      const cpu = cpuSeconds(pids()) - before
      const delivered = results.reduce((sum, r) => sum + r.delivered, 0)
      return {
        'delivered/CPU-s': delivered / cpu,
        'delivered %': (delivered / (expect * INSTANCES)) * 100,
        'p50 ms': Math.max(...results.map((r) => r.p50Ms)),
        'p99 ms': Math.max(...results.map((r) => r.p99Ms)),
        'servers + redis CPU s': cpu,
      }
    } finally {
      await Promise.all(servers.map(({ child }) => stopServer(child)))
      await redis.stop()
    }
  },
  primary: 'delivered/CPU-s',
}
