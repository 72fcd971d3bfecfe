// Metrics: histograms per app, gauges of open streams and sockets, rejections by app and
// reason, served by `server.metricsHandler()` as Prometheus text or OpenMetrics.
import test from 'ava'
import { Server, StreamingApp, connect, eventually, fixture, request, sleep, wsOpen } from './helpers.mjs'

/** The value of the sample line `name{labels}` in `text`, or undefined. */
function sample(text, series) {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

async function start(t) {
  const { root, cleanup } = fixture({ 'big.bin': Buffer.alloc(300_000, 7) })
  t.teardown(cleanup)
  const server = new Server()
  const streaming = new StreamingApp({ rateLimitRequests: 0, rateLimitBandwidth: 0, wsMaxMessageSize: 1024 })
  streaming.files('/files', { root })
  streaming.ws('/echo', { message(ws, data) { ws.send(data) } })
  streaming.sse('/events', { topics: () => ['news'] })
  server.mount('/stream', streaming)
  server.mount('/api', () => new Response('hello'), { maxUploadSize: 10 })
  server.mount('/metrics', server.metricsHandler())
  const { url, port } = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  return { server, url, port }
}

const scrape = async (url, accept) => (await fetch(`${url}/metrics`, { headers: accept ? { accept } : {} })).text()

test('request duration, time to first byte and response bytes are histograms per app', async (t) => {
  const { url } = await start(t)
  for (let i = 0; i < 5; i++) t.is(await (await fetch(`${url}/api/x`)).text(), 'hello')
  t.is((await request(`${url}/stream/files/big.bin`)).body.length, 300_000)
  const text = await eventually(async () => {
    const text = await scrape(url)
    return sample(text, 'floodgate_request_duration_seconds_count{app="/stream"}') === 1 ? text : undefined
  })
  t.truthy(text)
  t.is(sample(text, 'floodgate_request_duration_seconds_count{app="/api"}'), 5)
  t.is(sample(text, 'floodgate_time_to_first_byte_seconds_count{app="/api"}'), 5)
  t.is(sample(text, 'floodgate_response_bytes_sum{app="/api"}'), 25)
  t.is(sample(text, 'floodgate_response_bytes_sum{app="/stream"}'), 300_000)
  t.is(sample(text, 'floodgate_response_bytes_bucket{le="256.0",app="/api"}'), 5)
  t.is(sample(text, 'floodgate_response_bytes_bucket{le="+Inf",app="/stream"}'), 1)
  // Buckets are cumulative and end with every observation.
  t.is(sample(text, 'floodgate_request_duration_seconds_bucket{le="+Inf",app="/api"}'), 5)
})

test('open event streams and WebSockets are gauges per app; WebSocket message sizes a histogram', async (t) => {
  const { url } = await start(t)
  const stream = new AbortController()
  t.teardown(() => stream.abort())
  t.is((await fetch(`${url}/stream/events`, { signal: stream.signal })).status, 200)
  const ws = await wsOpen(t, `${url.replace('http', 'ws')}/stream/echo`)
  ws.client.send('x'.repeat(100))
  await eventually(() => ws.texts.length === 1)
  let text = await scrape(url)
  t.is(sample(text, 'floodgate_app_event_streams{app="/stream"}'), 1)
  t.is(sample(text, 'floodgate_app_websockets{app="/stream"}'), 1)
  t.is(sample(text, 'floodgate_app_websockets{app="/api"}'), 0)
  t.is(sample(text, 'floodgate_websocket_message_bytes_count'), 1)
  t.is(sample(text, 'floodgate_websocket_message_bytes_sum'), 100)
  stream.abort()
  ws.client.close()
  text = await eventually(async () => {
    const text = await scrape(url)
    const open = sample(text, 'floodgate_app_event_streams{app="/stream"}') + sample(text, 'floodgate_app_websockets{app="/stream"}')
    return open === 0 ? text : undefined
  })
  t.truthy(text)
})

test('rejections are counted by reason and by app', async (t) => {
  const { url } = await start(t)
  t.is((await fetch(`${url}/api/x`, { method: 'POST', body: 'x'.repeat(100) })).status, 413)
  t.is((await fetch(`${url}/stream/nothing-here`)).status, 404)
  const text = await scrape(url)
  t.is(sample(text, 'floodgate_rejections_total{reason="body_too_large"}'), 1)
  t.is(sample(text, 'floodgate_app_rejections_total{app="/api",reason="body_too_large"}'), 1)
  t.is(sample(text, 'floodgate_app_rejections_total{app="/stream",reason="not_found"}'), 1)
  t.is(sample(text, 'floodgate_app_rejections_total{app="/api",reason="not_found"}'), undefined, 'only reasons seen')
})

test('metricsHandler answers OpenMetrics to a scraper that accepts it, else Prometheus text', async (t) => {
  const { url, server } = await start(t)
  const plain = await fetch(`${url}/metrics`)
  t.is(plain.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8')
  const plainText = await plain.text()
  t.false(plainText.includes('# EOF'))
  const open = await fetch(`${url}/metrics`, { headers: { accept: 'application/openmetrics-text;version=1.0.0,text/plain;q=0.5' } })
  t.is(open.headers.get('content-type'), 'application/openmetrics-text; version=1.0.0; charset=utf-8')
  const openText = await open.text()
  t.true(openText.endsWith('# EOF\n'))
  t.regex(openText, /^# TYPE floodgate_request_duration_seconds histogram$/m)
  t.true(server.metrics({ openmetrics: true }).endsWith('# EOF\n'))
})

test('a scrape costs the series, not the connections: 200 more open connections add no line', async (t) => {
  const { url, port } = await start(t)
  const lines = (text) => text.split('\n').length
  const before = await scrape(url)
  const sockets = await Promise.all(Array.from({ length: 200 }, (_, i) => connect(port, { localAddress: `127.0.0.${10 + (i % 50)}` })))
  t.teardown(() => sockets.forEach((socket) => socket.destroy()))
  await sleep(100)
  const after = await scrape(url)
  t.true(sample(after, 'floodgate_connections') >= 200)
  t.is(lines(after), lines(before))
})
