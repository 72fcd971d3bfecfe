// Rejection events: every refusal reaches `server.on('reject')` with its reason, client and
// answer, at most `rejectEventsPerSecond` of them a second, the rest counted as `dropped`.
import test from 'ava'
import {
  Server,
  StreamingApp,
  connect,
  eventually,
  rawExchange,
  request,
  sleep,
  untilClosed,
  wsOpen,
  startWs,
} from './helpers.mjs'

/** A server whose `reject` events are collected in `events`. */
async function start(t, serverOptions, mount) {
  const server = new Server(serverOptions)
  const events = []
  server.on('reject', (event) => events.push(event))
  mount(server)
  const { url, port } = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  return { server, url, port, events }
}

const ok = (server) => server.mount('/api', () => new Response('ok'))

test('a connection over the per-address cap is a connection_limit event with its address and 429, and its address tops the offenders', async (t) => {
  const { server, port, events } = await start(t, { maxConnectionsPerIp: 2 }, ok)
  const held = [await connect(port, { localAddress: '127.0.0.2' }), await connect(port, { localAddress: '127.0.0.2' })]
  t.teardown(() => held.forEach((socket) => socket.destroy()))
  await sleep(100)
  for (let i = 0; i < 3; i++) {
    const refused = await rawExchange(port, '', { localAddress: '127.0.0.2' })
    t.true(refused.startsWith('HTTP/1.1 429'))
  }
  await eventually(() => events.length >= 3)
  t.is(events.length, 3)
  for (const event of events) {
    t.like(event, { reason: 'connection_limit', address: '127.0.0.2', status: 429, dropped: 0 })
    t.true(Math.abs(event.time - Date.now()) < 10_000)
  }
  const { topOffenders, rejectEventsDropped } = server.stats()
  t.like(topOffenders[0], { address: '127.0.0.2', count: 3, lastReason: 'connection_limit' })
  t.is(rejectEventsDropped, 0)
  // Legitimate traffic from elsewhere makes no event.
  t.is((await request(`http://127.0.0.1:${port}/api`, { localAddress: '127.0.0.3' })).status, 200)
  await sleep(200)
  t.is(events.length, 3)
})

test('a slow head is a header_timeout event with 408', async (t) => {
  const { port, events } = await start(t, { headerTimeout: 300 }, ok)
  const socket = await connect(port, { localAddress: '127.0.0.4' })
  const closed = untilClosed(socket)
  socket.write('GET /api HTTP/1.1\r\nHost: x\r\n')
  t.true((await closed).text.startsWith('HTTP/1.1 408'))
  await eventually(() => events.length >= 1)
  t.like(events[0], { reason: 'header_timeout', address: '127.0.0.4', status: 408 })
})

test('a body over maxUploadSize is a body_too_large event with 413 and the route', async (t) => {
  const { url, events } = await start(t, {}, (server) =>
    server.mount('/api', () => new Response('ok'), { maxUploadSize: 10 }),
  )
  const response = await fetch(`${url}/api/upload`, { method: 'POST', body: 'x'.repeat(100) })
  t.is(response.status, 413)
  await eventually(() => events.length >= 1)
  t.like(events[0], { reason: 'body_too_large', address: '127.0.0.1', status: 413, route: '/api/upload' })
})

test('a request over the rate limit is a rate_limited event with 429 and the user identify named', async (t) => {
  const { url, events } = await start(t, {}, (server) => {
    const app = new StreamingApp({ rateLimitRequests: 1, rateLimitWindow: '1m', identify: () => 'mallory' })
    app.get('/x', () => new Response('ok'))
    server.mount('/s', app)
  })
  t.is((await fetch(`${url}/s/x`)).status, 200)
  t.is((await fetch(`${url}/s/x`)).status, 429)
  await eventually(() => events.length >= 1)
  t.like(events[0], { reason: 'rate_limited', user: 'mallory', status: 429, route: '/s/x' })
})

test('a WebSocket message over wsMaxMessageSize is a ws_message_too_large event with close code 1009', async (t) => {
  const { server, base } = await startWs(t, { '/echo': { message() {} } }, { wsMaxMessageSize: 256 })
  const events = []
  server.on('reject', (event) => events.push(event))
  const ws = await wsOpen(t, `${base}/echo`, { localAddress: '127.0.0.5' })
  ws.client.send('x'.repeat(1000))
  t.is((await ws.closing).code, 1009)
  await eventually(() => events.length >= 1)
  t.like(events[0], { reason: 'ws_message_too_large', address: '127.0.0.5', closeCode: 1009 })
  t.is(events[0].status, undefined)
})

test('a flood of refusals reaches JS at most rejectEventsPerSecond a second, the rest counted as dropped', async (t) => {
  const perSecond = 10
  const { server, url, events } = await start(t, { rejectEventsPerSecond: perSecond }, ok)
  const total = 300
  const agent = new (await import('node:http')).Agent({ keepAlive: true, maxSockets: 8 })
  t.teardown(() => agent.destroy())
  await Promise.all(Array.from({ length: total }, () => request(`${url}/nowhere`, { agent })))
  t.is(server.stats().rejections.not_found, total)
  // A second later, one more refusal carries the count of those left out.
  await sleep(1100)
  t.is((await request(`${url}/nowhere`)).status, 404)
  await eventually(() => events.at(-1)?.dropped > 0, { timeout: 3_000 })
  const bySecond = new Map()
  for (const event of events) {
    const second = Math.floor(event.time / 1000)
    bySecond.set(second, (bySecond.get(second) ?? 0) + 1)
  }
  for (const count of bySecond.values()) t.true(count <= perSecond, `${count} events in one second`)
  const dropped = events.reduce((sum, event) => sum + event.dropped, 0)
  t.is(events.length + dropped, total + 1)
  t.is(server.stats().rejectEventsDropped, dropped)
})

test('rejectEventsPerSecond: 0 sends no events, the refusals are still counted', async (t) => {
  const { server, url, events } = await start(t, { rejectEventsPerSecond: 0 }, ok)
  t.is((await request(`${url}/nowhere`)).status, 404)
  await sleep(200)
  t.is(events.length, 0)
  t.is(server.stats().rejections.not_found, 1)
})

test('bad rejection-event options are TypeErrors naming them', (t) => {
  t.throws(() => new Server({ rejectEventsPerSecond: -1 }), { instanceOf: TypeError, message: /rejectEventsPerSecond/ })
  t.throws(() => new Server({ topOffenders: 5000 }), { instanceOf: TypeError, message: /topOffenders/ })
  t.throws(() => new Server({ topOffenders: 'many' }), { instanceOf: TypeError, message: /topOffenders/ })
})

test('an event stream over the per-user cap is an sse_limit event with 429 and the user', async (t) => {
  const { url, events } = await start(t, {}, (server) => {
    const app = new StreamingApp({ rateLimitRequests: 0, sseMaxConnectionsPerUser: 1 })
    app.sse('/events', { authenticate: () => 'eve', topics: () => ['news'] })
    server.mount('/s', app)
  })
  const first = new AbortController()
  t.teardown(() => first.abort())
  t.is((await fetch(`${url}/s/events`, { signal: first.signal })).status, 200)
  t.is((await fetch(`${url}/s/events`)).status, 429)
  await eventually(() => events.length >= 1)
  t.like(events[0], { reason: 'sse_limit', user: 'eve', address: '127.0.0.1', status: 429, route: '/s/events' })
})
