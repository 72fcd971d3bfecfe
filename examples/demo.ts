/**
 * `npm start`: a floodgate server with business handlers in JS beside protected streaming
 * routes served by Rust — files, uploads, a streamed report and a WebSocket chat.
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Server, StreamingApp, StreamingResponse, FileResponse } from '../index'

const root = join(__dirname, 'sample')
const incoming = join(root, 'incoming')
mkdirSync(incoming, { recursive: true })
writeFileSync(join(root, 'hello.txt'), 'Hello from floodgate!\n')
writeFileSync(join(root, 'big.bin'), Buffer.alloc(32 * 1024 * 1024, 7))
writeFileSync(join(root, '.secret'), 'dotfiles are never served\n')

async function* report() {
  for (let line = 1; line <= 5; line++) {
    yield `line ${line} of a report generated in JS\n`
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
}

async function main() {
  const server = new Server({ maxConnectionsPerIp: 20, headerTimeout: '10s' })
  server.on('error', (error) => console.error('handler error:', error))

  const streaming = new StreamingApp({
    rateLimitBandwidth: '2mb',
    downloadTimeout: '2m',
    maxUploadSize: '10mb',
    rateLimitRequests: 600,
  })
  streaming.files('/files', { root })
  streaming.uploads('/upload', { dir: incoming })
  streaming.get('/report', () => new StreamingResponse(report(), { mediaType: 'text/plain' }))
  streaming.get('/download/:name', (req, { params }) =>
    params.name === 'hello' ? new FileResponse(join(root, 'hello.txt'), { attachment: true }) : new Response('no', { status: 404 }),
  )
  // Every message is published to the room; Rust fans it out to every subscribed socket.
  streaming.ws('/chat', {
    open: (ws) => ws.subscribe('chat.room'),
    message: (ws, data) => server.publish('chat.room', `${ws.remoteAddress}: ${String(data)}`),
  })
  server.mount('/stream', streaming)
  server.mount('/api', (req: Request) => Response.json({ ok: true, path: new URL(req.url).pathname }))
  server.mount('/_floodgate', server.dashboard()) // loopback clients only without `authenticate`

  const { url } = await server.listen({ port: Number(process.env.PORT ?? 8080), host: '127.0.0.1' })
  const stop = () => server.close({ drain: 5_000 }).then(() => process.exit(0))
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
  const s = `${url}/stream`
  console.log(`floodgate demo listening on ${url}

Try:
  curl -i ${url}/api/anything                          # a JS handler (fetch-style)
  curl -i ${s}/files/hello.txt                         # a file, with ETag and Last-Modified
  curl -i -H 'Range: bytes=0-4' ${s}/files/hello.txt    # 206 Partial Content
  curl -o /dev/null -w '%{speed_download} B/s\\n' ${s}/files/big.bin   # shaped to 2 MiB/s
  curl -N ${s}/report                                  # streamed from an async generator
  curl -i ${s}/download/hello                          # a file chosen in JS, streamed by Rust
  curl -i -T README.md ${s}/upload/readme.md           # an atomic upload: 201 {name,size,sha256}
  curl -i --path-as-is ${s}/files/../../etc/passwd     # 404: never outside the root
  curl -i ${s}/files/.secret                           # 404: dotfiles are not served

The live dashboard (connections, bandwidth, refusals, offenders): ${url}/_floodgate

And in two browser tabs' consoles, a WebSocket chat room:
  ws = new WebSocket('${s.replace('http', 'ws')}/chat'); ws.onmessage = (e) => console.log(e.data)
  ws.send('hello')

Ctrl-C stops it (in-flight transfers get 5 s to finish).`)
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
