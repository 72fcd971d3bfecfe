// One floodgate instance of a cluster, in a process of its own, for the cluster tests and the
// README's two-process example.
//
// usage: node cluster_server.cjs '{"cluster": {...}, "streaming": {...}, "sse": {...}, "rate": {...}, "listen": {...}}'
// Prints `READY <port>`. Routes (the user is ?user=, else the client address):
//   /s/ws            WebSocket; echoes, and `sub:<pattern>` subscribes to a topic pattern
//   /s/events        event stream on the ?topic= patterns (repeatable)
//   /r/hit           a JS handler behind `rateLimitRequests` (options `rate`), identify = ?user=
//   /publish         POST ?topic=&event=&id=, body = data: server.publish on this instance
//   /stats           server.stats()
//   /pid             this process's id
const { join } = require('node:path')
const { Server, StreamingApp } = require(join(__dirname, '..', '..', 'index.js'))

const config = JSON.parse(process.argv[2] ?? '{}')
const server = new Server({ cluster: config.cluster, ...config.server })
const user = (req) => new URL(req.url, 'http://x').searchParams.get('user') || undefined

const streaming = new StreamingApp({ rateLimitRequests: 0, rateLimitBandwidth: 0, ...config.streaming })
streaming.ws('/ws', {
  authenticate: user,
  message(socket, data) {
    const text = String(data)
    if (text.startsWith('sub:')) {
      socket.subscribe(text.slice(4))
      socket.send(`subscribed:${text.slice(4)}`)
    } else socket.send(text)
  },
})
streaming.sse('/events', {
  authenticate: user,
  topics: (req) => new URL(req.url, 'http://x').searchParams.getAll('topic'),
  snapshot: () => ({ snapshot: true }),
  ...config.sse,
})
server.mount('/s', streaming)

const limited = new StreamingApp({ rateLimitBandwidth: 0, identify: user, ...config.rate })
limited.get('/hit', () => new Response('ok'))
server.mount('/r', limited)

server.mount('/publish', async (req) => {
  const query = new URL(req.url, 'http://x').searchParams
  const reached = server.publish(query.get('topic'), await req.text(), {
    event: query.get('event') ?? undefined,
    id: query.get('id') ?? undefined,
  })
  return Response.json({ reached })
})
server.mount('/stats', () => Response.json(server.stats()))
server.mount('/pid', () => new Response(String(process.pid)))

server.listen({ port: 0, host: '127.0.0.1', ...config.listen }).then(({ port }) => console.log(`READY ${port}`))
process.on('SIGTERM', () => server.close({ drain: 0 }).then(() => process.exit(0)))
