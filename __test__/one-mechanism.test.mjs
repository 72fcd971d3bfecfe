// Mechanisms that used to be written once per path and drifted: each is now one, and holds on
// every path that uses it (the response deadline, the per-client key of connection caps).
import test from 'ava'
import http from 'node:http'
import { Server, StreamingApp, floodgate, connect, eventually } from './helpers.mjs'

const { StreamingResponse } = floodgate

async function start(t, app, serverOptions = {}) {
  const server = new Server(serverOptions)
  server.mount('/', app)
  const { url, port } = await server.listen({ port: 0 })
  t.teardown(() => server.close({ drain: 0 }))
  return { server, url, port }
}

test('downloadTimeout bounds a streamed JS response as it bounds a file', async (t) => {
  let finished = false
  const app = new StreamingApp({ rateLimitRequests: 0, downloadTimeout: '1s' })
  app.get('/endless', () =>
    new StreamingResponse(
      (async function* () {
        try {
          // A trickle that never ends on its own (bounded here at 30 s).
          for (let i = 0; i < 300; i++) {
            yield 'x'.repeat(16)
            await new Promise((resolve) => setTimeout(resolve, 100))
          }
        } finally {
          finished = true
        }
      })(),
    ),
  )
  const { server, port } = await start(t, app)
  const started = Date.now()
  const received = await new Promise((resolve) => {
    let bytes = 0
    const req = http.get({ port, path: '/endless', agent: false }, (res) => {
      res.on('data', (chunk) => (bytes += chunk.length))
      res.on('error', () => {})
      res.on('close', () => resolve(bytes))
    })
    req.on('error', () => resolve(bytes))
  })
  const elapsed = Date.now() - started
  t.true(received > 0, 'the stream started')
  // Cut off at the deadline: about 1 s, far from the 30 s the generator would run.
  t.true(elapsed >= 900 && elapsed < 8_000, `cut off after ${elapsed} ms`)
  t.is(server.stats().rejections.download_timeout, 1)
  // The generator is closed (its finally ran) when the response is cut off.
  await eventually(() => finished)
  t.pass()
})

/** Opens an event stream as the client `forwardedFor` (behind a trusted proxy on 127.0.0.1). */
async function openStream(port, forwardedFor) {
  const socket = await connect(port)
  let text = ''
  socket.on('data', (chunk) => (text += chunk))
  socket.on('error', () => {})
  socket.write(`GET /events HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: ${forwardedFor}\r\n\r\n`)
  await eventually(() => /^HTTP\/1\.1 \d{3}/.test(text))
  return { status: Number(text.slice(9, 12)), socket }
}

test('event streams key their per-user cap like WebSockets: anonymous IPv6 clients per /64', async (t) => {
  const app = new StreamingApp({ rateLimitRequests: 0, sseMaxConnectionsPerUser: 1 })
  app.sse('/events', { topics: ['t'] })
  const { port } = await start(t, app, { trustProxy: ['127.0.0.1'] })
  const first = await openStream(port, '2001:db8:1:2::1')
  t.is(first.status, 200)
  // Another address of the same /64 is the same client: over its cap.
  const sameHost = await openStream(port, '2001:db8:1:2::ffff')
  t.is(sameHost.status, 429)
  // Another /64 is another client.
  const otherHost = await openStream(port, '2001:db8:1:3::1')
  t.is(otherHost.status, 200)
  for (const stream of [first, sameHost, otherHost]) stream.socket.destroy()
})
