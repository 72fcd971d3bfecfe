// floodgate serving ROOT at /stream/files, unshaped, as the benchmark's subject.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { Server, StreamingApp, StreamingResponse } = require('../../index.js')
const { publishFor } = require('./publish.cjs')

// TLS workloads: the same certificate as the other peers.
const tls = process.env.TLS_CERT && { cert: process.env.TLS_CERT, key: process.env.TLS_KEY }
// The observability A/B (`--observe-ab`): METRICS=0 turns histograms and rejection events off;
// ACCESS_LOG=<path> writes the access log there.
const observe = {
  ...(process.env.METRICS === '0' && { metrics: false }),
  ...(process.env.ACCESS_LOG && { accessLog: process.env.ACCESS_LOG }),
}
const server = new Server({ maxConnectionsPerIp: 0, ...(tls && { tls }), ...observe })
const app = new StreamingApp({
  rateLimitBandwidth: 0,
  rateLimitRequests: 0,
  downloadTimeout: 0,
  maxUploadSize: '2gb',
  sseMaxConnectionsPerUser: 0,
  sseMaxConnections: 50_000,
})
app.files('/files', { root: process.env.ROOT })
// /up writes like the Node peer does (no fsync: both leave the data in the page cache);
// /up-sync is floodgate's default, which syncs every upload to disk before renaming it.
app.uploads('/up', { dir: process.env.UPLOAD_DIR ?? process.env.ROOT, fsync: false })
app.uploads('/up-sync', { dir: process.env.UPLOAD_DIR ?? process.env.ROOT })
// /form: multipart forms, without fsync like the Fastify peer.
app.uploads('/form', { dir: process.env.UPLOAD_DIR ?? process.env.ROOT, fsync: false, multipart: { maxFiles: 2000, maxParts: 4000 } })
// /tus: resumable uploads (tus 1.0), without fsync, beside the raw /up; /tus-sync with it.
app.uploads('/tus', { dir: process.env.UPLOAD_DIR ?? process.env.ROOT, fsync: false, resumable: {} })
app.uploads('/tus-sync', { dir: process.env.UPLOAD_DIR ?? process.env.ROOT, resumable: {} })
app.get('/generate', () => new StreamingResponse(chunks(), { mediaType: 'application/octet-stream' }))
app.sse('/sse', { topics: ['bench'] })
server.mount('/stream', app)
server.mount('/api/publish', (req) => {
  // Starts a publishing run: rate events per second for the given seconds.
  const params = new URL(req.url).searchParams
  publishFor(Number(params.get('rate')), Number(params.get('seconds')), (data) => server.publish('bench', data), Number(params.get('size') ?? 0))
  return new Response(null, { status: 204 })
})
server.mount('/api/json', () => Response.json({ hello: 'world' }))
// WebSocket at /ws, every cap off (the ws peer has none): /ws/echo echoes from a JS handler,
// /ws/bench subscribes to the topic /api/publish publishes to, /ws/idle only holds the socket.
// Guarded so that a build without WebSocket support still serves the other workloads.
try {
  const ws = new StreamingApp({
    rateLimitRequests: 0,
    rateLimitBandwidth: 0,
    wsMaxMessagesPerSecond: 0,
    wsMaxConnectionsPerUser: 0,
    wsMaxConnectionsPerIp: 0,
    wsMaxConnections: 50_000,
    wsIdleTimeout: 0,
  })
  ws.ws('/echo', { message: (socket, data) => socket.send(data) })
  ws.ws('/bench', { open: (socket) => socket.subscribe('bench') })
  ws.ws('/idle', {})
  // permessage-deflate: the default (a compressor and an inflater shared per worker thread,
  // no context kept between messages), and contexts of each socket's own.
  const own = { serverNoContextTakeover: false, clientNoContextTakeover: false }
  ws.ws('/echo-deflate', { compression: true, message: (socket, data) => socket.send(data) })
  ws.ws('/echo-deflate-own', { compression: own, message: (socket, data) => socket.send(data) })
  ws.ws('/bench-deflate', { compression: true, open: (socket) => socket.subscribe('bench') })
  server.mount('/ws', ws)
} catch (err) {
  console.error(`floodgate bench server: no WebSocket mount (${err.message})`)
}

// The same chunks every peer writes: 100 MiB in 64 KiB pieces.
async function* chunks() {
  const chunk = Buffer.alloc(64 * 1024, 7)
  for (let i = 0; i < 1600; i++) yield chunk
}
const { port } = await server.listen({ port: 0, host: '127.0.0.1' })
console.log(`READY ${port}`)
process.on('SIGTERM', () => server.close({ drain: 0 }).then(() => process.exit(0)))
