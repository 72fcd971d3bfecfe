// floodgate serving ROOT at /stream/files, unshaped, as the benchmark's subject.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { Server, StreamingApp, StreamingResponse } = require('../../index.js')
const { publishFor } = require('./publish.cjs')

const server = new Server({ maxConnectionsPerIp: 0 })
const app = new StreamingApp({
  rateLimitBandwidth: 0,
  rateLimitRequests: 0,
  downloadTimeout: 0,
  maxUploadSize: '2gb',
  sseMaxConnectionsPerUser: 0,
  sseMaxConnections: 50_000,
})
app.files('/files', { root: process.env.ROOT })
app.uploads('/up', { dir: process.env.UPLOAD_DIR ?? process.env.ROOT })
app.get('/generate', () => new StreamingResponse(chunks(), { mediaType: 'application/octet-stream' }))
app.sse('/sse', { topics: ['bench'] })
server.mount('/stream', app)
server.mount('/api/publish', (req) => {
  // Starts a publishing run: rate events per second for the given seconds.
  const params = new URL(req.url).searchParams
  publishFor(Number(params.get('rate')), Number(params.get('seconds')), (data) => server.publish('bench', data))
  return new Response(null, { status: 204 })
})
server.mount('/api/json', () => Response.json({ hello: 'world' }))

// The same chunks every peer writes: 100 MiB in 64 KiB pieces.
async function* chunks() {
  const chunk = Buffer.alloc(64 * 1024, 7)
  for (let i = 0; i < 1600; i++) yield chunk
}
const { port } = await server.listen({ port: 0, host: '127.0.0.1' })
console.log(`READY ${port}`)
process.on('SIGTERM', () => server.close({ drain: 0 }).then(() => process.exit(0)))
