// The `ws` package on Node `http`: WebSocket written the obvious way, as the peer of floodgate's
// app.ws routes (mounted at /ws). /ws/echo echoes each message from a JS handler; /ws/bench joins
// the fan-out Set that /api/publish sends every event to, one send per socket; /ws/idle only holds.
// The same routes with -deflate (and -deflate-own) negotiate permessage-deflate with ws's own
// defaults (`perMessageDeflate: true`: contexts per socket, kept between messages, 1 KiB threshold).
import http from 'node:http'
import { createRequire } from 'node:module'
import { WebSocketServer } from 'ws'

const require = createRequire(import.meta.url)
const { publishFor } = require('./publish.cjs')

const subscribers = new Set()
const server = http.createServer((req, res) => {
  if (req.url.startsWith('/api/publish')) {
    // Starts a publishing run: rate events per second for the given seconds.
    const params = new URL(req.url, 'http://x').searchParams
    publishFor(
      Number(params.get('rate')),
      Number(params.get('seconds')),
      (data) => {
        for (const socket of subscribers) socket.send(data)
      },
      Number(params.get('size') ?? 0),
    )
    res.writeHead(204).end()
    return
  }
  res.writeHead(404).end()
})
const plain = new WebSocketServer({ noServer: true })
const deflating = new WebSocketServer({ noServer: true, perMessageDeflate: true })
server.on('upgrade', (req, socket, head) => {
  const wss = /-deflate/.test(req.url) ? deflating : plain
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req))
})
const onConnection = (socket, req) => {
  if (req.url.startsWith('/ws/echo')) {
    socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }))
  } else if (req.url.startsWith('/ws/bench')) {
    subscribers.add(socket)
    socket.on('close', () => subscribers.delete(socket))
  } else if (!req.url.startsWith('/ws/idle')) {
    socket.close(1008, 'no such route')
  }
  socket.on('error', () => {})
}
plain.on('connection', onConnection)
deflating.on('connection', onConnection)
server.listen(0, '127.0.0.1', () => console.log(`READY ${server.address().port}`))
process.on('SIGTERM', () => process.exit(0))
