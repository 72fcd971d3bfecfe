// Socket.IO 4 with @socket.io/redis-adapter, one instance of a cluster on REDIS: the peer of
// the cluster-fanout workload (what Node users pick for fan-out across processes). WebSocket
// transport only, no compression, like the floodgate side.
//   /socket.io/   Socket.IO; every socket gets the `bench` events
//   /api/publish  starts a publishing run (rate, seconds): io.emit('bench', event) on every node
//   /api/count    sockets connected to this instance
import http from 'node:http'
import { createRequire } from 'node:module'
import { Server } from 'socket.io'
import { createAdapter } from '@socket.io/redis-adapter'
import { createClient } from 'redis'

const require = createRequire(import.meta.url)
const { publishFor } = require('./publish.cjs')

const pub = createClient({ url: process.env.REDIS })
const sub = pub.duplicate()
await Promise.all([pub.connect(), sub.connect()])
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x')
  if (url.pathname === '/api/publish') {
    // The same events as every other peer's, sent as objects (Socket.IO serializes them).
    publishFor(Number(url.searchParams.get('rate')), Number(url.searchParams.get('seconds')), (data) => io.emit('bench', JSON.parse(data)))
    res.writeHead(204).end()
  } else if (url.pathname === '/api/count') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ sockets: io.of('/').sockets.size }))
  } else res.writeHead(404).end()
})
const io = new Server(server, { transports: ['websocket'], perMessageDeflate: false, serveClient: false, adapter: createAdapter(pub, sub) })
server.listen(0, '127.0.0.1', () => console.log(`READY ${server.address().port}`))
process.on('SIGTERM', () => io.close(() => process.exit(0)))
