// A floodgate server in a process of its own, for the attack tests and `npm run soak`: its
// memory and file descriptors are then the server's alone.
//
// usage: node attack_server.cjs '{"server": {...}, "streaming": {...}, "root": DIR, "uploads": DIR}'
// Prints `READY <port>`. Routes:
//   /stream/files/*   files under `root`
//   /stream/up/*      uploads into `uploads`
//   /stream/hello     a JS handler in the streaming app
//   /stream/events    SSE, topic `news`, the user is ?u= (else `anonymous`)
//   /stream/echo      WebSocket echo (messages and close codes counted)
//   /api/*            a plain JS mount answering `api:<path>`; POST bodies are read
//   /publish          publishes one event on `news`
//   /stats            { stats: server.stats(), fds, rss, ws }: fds from /proc/self/fd
const { readdirSync } = require('node:fs')
const { join } = require('node:path')
const { Server, StreamingApp } = require(join(__dirname, '..', '..', 'index.js'))

const config = JSON.parse(process.argv[2] ?? '{}')
const server = new Server(config.server ?? {})
const app = new StreamingApp({ rateLimitRequests: 0, rateLimitBandwidth: 0, ...config.streaming })
const ws = { messages: 0, closes: {} }

if (config.root) app.files('/files', { root: config.root })
if (config.uploads) app.uploads('/up', { dir: config.uploads })
app.get('/hello', () => 'hello')
app.sse('/events', {
  authenticate: (req) => new URL(req.url).searchParams.get('u') || 'anonymous',
  topics: ['news'],
  ...config.sse,
})
app.ws('/echo', {
  message(socket, data) {
    ws.messages++
    socket.send(data)
  },
  close(socket, code) {
    ws.closes[code] = (ws.closes[code] ?? 0) + 1
  },
})
server.mount('/stream', app)
server.mount('/api', async (req) => {
  if (req.method === 'POST' || req.method === 'PUT') await req.arrayBuffer()
  return `api:${new URL(req.url).pathname}`
})
let published = 0
server.mount('/publish', () => {
  server.publish('news', { n: ++published, at: Date.now() })
  return 'ok'
})
const fds = () => {
  try {
    return readdirSync('/proc/self/fd').length
  } catch {
    return -1 // no /proc (macOS, Windows)
  }
}
server.mount('/stats', () => Response.json({ stats: server.stats(), fds: fds(), rss: process.memoryUsage().rss, ws }))

server.listen({ port: 0, host: '127.0.0.1' }).then(({ port }) => console.log(`READY ${port}`))
process.on('SIGTERM', () => server.close({ drain: 0 }).then(() => process.exit(0)))
