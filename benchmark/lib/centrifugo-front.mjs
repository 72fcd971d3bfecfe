// Runs Centrifugo v6 with the given config (its port, log level, API key and client settings
// added here) behind a small Node front that gives the harness what the other peers' servers
// have:
//   /api/publish  starts a publishing run (rate, seconds) through Centrifugo's HTTP publish API
//   /api/count    subscribers of `bench` (Centrifugo's channels API)
//   /api/ws-port  where clients connect
// Prints `READY <front port> <centrifugo pid>` once Centrifugo answers.
import http from 'node:http'
import net from 'node:net'
import { spawn } from 'node:child_process'
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { publishFor } = require('../servers/publish.cjs')
const KEY = 'bench-api-key'

const freePort = () =>
  new Promise((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address()
      probe.close(() => resolve(port))
    })
  })

export async function serveCentrifugo(binary, config) {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'floodgate-centrifugo-'))
  writeFileSync(
    join(dir, 'config.json'),
    JSON.stringify({
      log: { level: 'error' },
      http_server: { address: '127.0.0.1', port },
      client: { insecure: true, allowed_origins: ['*'] },
      http_api: { key: KEY },
      channel: { without_namespace: { allow_subscribe_for_client: true } },
      ...config,
    }),
  )
  const child = spawn(binary, ['--config', join(dir, 'config.json')], { stdio: ['ignore', 'inherit', 'inherit'] })
  const stop = () => {
    child.kill('SIGTERM')
    rmSync(dir, { recursive: true, force: true })
  }
  process.on('exit', stop)
  process.on('SIGTERM', () => process.exit(0))

  const api = async (method, params) => {
    const response = await fetch(`http://127.0.0.1:${port}/api/${method}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': KEY },
      body: JSON.stringify(params),
    })
    if (!response.ok) throw new Error(`centrifugo ${method}: ${response.status}`)
    return response.json()
  }
  for (let i = 0; ; i++) {
    try {
      await api('info', {})
      break
    } catch (err) {
      if (i > 200) throw err
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }

  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x')
    if (url.pathname === '/api/publish') {
      publishFor(Number(url.searchParams.get('rate')), Number(url.searchParams.get('seconds')), (data) =>
        api('publish', { channel: 'bench', data: JSON.parse(data) }).catch(() => {}),
      )
      res.writeHead(204).end()
    } else if (url.pathname === '/api/count') {
      const { result } = await api('channels', { pattern: 'bench' })
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ subscribers: result?.channels?.bench?.num_clients ?? 0 }))
    } else if (url.pathname === '/api/ws-port') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ port }))
    } else res.writeHead(404).end()
  })
  server.listen(0, '127.0.0.1', () => console.log(`READY ${server.address().port} ${child.pid}`))
}
