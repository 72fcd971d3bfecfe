// Load shedding: while the JS thread is stuck, new JS-handler requests get 503 + Retry-After
// before they reach JS (`event_loop_overload`), and what Rust serves alone goes on.
import test from 'ava'
import { fixture, request, serverProcess, sleep } from './helpers.mjs'

const server = (root, options) => `
  const { Server, StreamingApp } = floodgate
  const server = new Server(${JSON.stringify(options)})
  const app = new StreamingApp({ rateLimitRequests: 0, rateLimitBandwidth: 0 })
  app.files('/files', { root: ${JSON.stringify(root)} })
  server.mount('/stream', app)
  server.mount('/api', (req) => {
    const ms = Number(new URL(req.url).searchParams.get('block') ?? 0)
    const until = Date.now() + ms
    while (Date.now() < until) {}
    return new Response('ok')
  })
  server.mount('/stats', () => Response.json(server.stats()))
  server.listen({ port: 0 }).then(({ port }) => console.log('READY ' + port))
`

test('a stuck JS thread: /api sheds with 503 + Retry-After, counted, while files keep serving', async (t) => {
  const { root, cleanup } = fixture({ 'big.bin': Buffer.alloc(4 << 20, 3) })
  t.teardown(cleanup)
  const { port } = await serverProcess(t, server(root, { maxEventLoopDelay: 200 }))
  const base = `http://127.0.0.1:${port}`
  t.is((await request(`${base}/api/x`)).status, 200)
  const blocked = request(`${base}/api/x?block=3000`)
  await sleep(300)
  // A request queued behind the stuck turn waits past the bound, then others are shed.
  const queued = request(`${base}/api/x`)
  await sleep(400)
  const started = Date.now()
  const shed = await request(`${base}/api/x`)
  t.is(shed.status, 503)
  t.is(shed.headers['retry-after'], '1')
  t.true(Date.now() - started < 1_000, 'answered without waiting for JS')
  const file = await request(`${base}/stream/files/big.bin`)
  t.is(file.status, 200)
  t.is(file.body.length, 4 << 20)
  t.true(Date.now() - started < 2_000, 'the file was served while JS was stuck')
  t.is((await blocked).status, 200)
  t.is((await queued).status, 200)
  // Once the JS thread is back, requests reach it again.
  t.is((await request(`${base}/api/x`)).status, 200)
  const stats = JSON.parse((await request(`${base}/stats`)).body)
  t.true(stats.rejections.event_loop_overload >= 1)
})

test('without maxEventLoopDelay nothing is shed: requests wait for the JS thread', async (t) => {
  const { root, cleanup } = fixture({ 'a.txt': 'a' })
  t.teardown(cleanup)
  const { port } = await serverProcess(t, server(root, {}))
  const base = `http://127.0.0.1:${port}`
  const blocked = request(`${base}/api/x?block=800`)
  await sleep(200)
  const waiting = request(`${base}/api/x`)
  await sleep(400)
  t.is((await request(`${base}/api/x`)).status, 200)
  t.is((await blocked).status, 200)
  t.is((await waiting).status, 200)
})

test('maxEventLoopDelay must be a duration', async (t) => {
  const { Server } = await import('./helpers.mjs')
  t.throws(() => new Server({ maxEventLoopDelay: '10 parsecs' }), { instanceOf: TypeError, message: /maxEventLoopDelay/ })
  t.throws(() => new Server({ maxEventLoopDelay: -5 }), { instanceOf: TypeError, message: /maxEventLoopDelay/ })
})
