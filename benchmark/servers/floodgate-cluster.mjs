// floodgate as one instance of a cluster, for the cluster workloads: REDIS (a redis:// URL) turns
// the `cluster` option on; without it the same routes run with per-process limits only.
//   /ws/capped   a WebSocket holding its connection, under per-user and per-address caps high
//                enough never to refuse (so each connect takes a lease with REDIS)
//   /ws/bench    a WebSocket subscribed to `bench`
//   /api/publish starts a publishing run on `bench` (rate, seconds), as servers/floodgate.mjs
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { Server, StreamingApp } = require('../../index.js')
const { publishFor } = require('./publish.cjs')

const cluster = process.env.REDIS ? { redis: process.env.REDIS, prefix: process.env.PREFIX ?? 'bench', history: Number(process.env.HISTORY ?? 256) } : undefined
const server = new Server({ maxConnectionsPerIp: 0, cluster })
const ws = new StreamingApp({
  rateLimitRequests: 0,
  rateLimitBandwidth: 0,
  wsMaxMessagesPerSecond: 0,
  wsMaxConnectionsPerUser: 100_000,
  wsMaxConnectionsPerIp: 100_000,
  wsMaxConnections: 50_000,
  wsIdleTimeout: 0,
})
ws.ws('/capped', {})
ws.ws('/bench', { open: (socket) => socket.subscribe('bench') })
server.mount('/ws', ws)
server.mount('/api/publish', (req) => {
  const params = new URL(req.url).searchParams
  publishFor(Number(params.get('rate')), Number(params.get('seconds')), (data) => server.publish('bench', data))
  return new Response(null, { status: 204 })
})
server.mount('/api/stats', () => Response.json(server.stats()))
const { port } = await server.listen({ port: 0, host: '127.0.0.1' })
console.log(`READY ${port}`)
process.on('SIGTERM', () => server.close({ drain: 0 }).then(() => process.exit(0)))
