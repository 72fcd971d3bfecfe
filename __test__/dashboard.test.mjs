// The live dashboard (`server.dashboard()`): its page in headless Chromium (driven by
// playwright-core) while an attack runs from 127.0.0.2, its event stream read with the
// eventsource package, and `authenticate` guarding both.
import test from 'ava'
import { mkdirSync } from 'node:fs'
import net from 'node:net'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { EventSource } from 'eventsource'
import http from 'node:http'
import http2 from 'node:http2'
import { Server, StreamingApp, chromiumTool, eventually, needs, opensslTool, rawExchange, request, selfSignedCertificate, sleep, wsOpen } from './helpers.mjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')

/** A server with the dashboard at /_floodgate (`dashboard` options) and an app at /api. */
async function start(t, { server: serverOptions = {}, dashboard, setup } = {}) {
  const server = new Server(serverOptions)
  server.mount('/_floodgate', server.dashboard(dashboard))
  server.mount('/api', async (req) => {
    const { pathname } = new URL(req.url)
    if (pathname === '/blob') return new Response(new Uint8Array(256 * 1024))
    await sleep(1 + Math.floor(Math.random() * 20))
    return Response.json({ ok: true })
  })
  setup?.(server)
  const { url, port } = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  return { server, url, port }
}

/** The frames of one event stream (history events flattened), read with the eventsource package. */
function readStream(t, url, init) {
  const source = new EventSource(url, init)
  t.teardown(() => source.close())
  const state = { source, history: undefined, frames: [], errors: [] }
  source.addEventListener('history', (event) => (state.history = JSON.parse(event.data)))
  source.addEventListener('frame', (event) => state.frames.push(JSON.parse(event.data)))
  source.addEventListener('error', (event) => state.errors.push(event))
  return state
}

test('the event stream sends the frames kept, then one frame a second, each with the documented shape', async (t) => {
  const { url, port } = await start(t)
  for (let i = 0; i < 5; i++) t.is((await request(`${url}/api/x`, { localAddress: '127.0.0.3' })).status, 200)
  const stream = readStream(t, `${url}/_floodgate/events`)
  t.truthy(await eventually(() => stream.frames.length >= 2, { timeout: 10_000 }), 'two frames within 10 s')
  t.true(Array.isArray(stream.history) && stream.history.length >= 1, 'a history first')
  const [first, second] = stream.frames
  const within = second.time - first.time
  t.true(within > 500 && within < 3000, `a frame about every second (${within} ms)`)
  for (const frame of [...stream.history, ...stream.frames]) {
    for (const key of ['time', 'interval', 'connections', 'eventStreams', 'websockets', 'connectionsPerSecond', 'requestsPerSecond', 'bytesInPerSecond', 'bytesOutPerSecond', 'requests', 'connectionsAccepted', 'bytesIn', 'bytesOut', 'latencyCount']) {
      t.is(typeof frame[key], 'number', key)
    }
    for (const key of ['latencyP50', 'latencyP99']) t.true(frame[key] === null || typeof frame[key] === 'number', key)
    t.is(typeof frame.rejectionsPerSecond, 'object')
    t.is(typeof frame.rejections, 'object')
    t.true(Array.isArray(frame.topOffenders))
  }
  t.true(second.requests >= 5, 'the requests made before are counted')
  t.true(second.connections >= 1, 'the stream itself is an open connection')
  t.deepEqual(Object.keys(second).sort(), [
    'bytesIn', 'bytesInPerSecond', 'bytesOut', 'bytesOutPerSecond', 'connections', 'connectionsAccepted', 'connectionsPerSecond',
    'eventStreams', 'interval', 'latencyCount', 'latencyP50', 'latencyP99', 'rejections', 'rejectionsPerSecond', 'requests',
    'requestsPerSecond', 'time', 'topOffenders', 'websockets',
  ])

  // Requests and refusals in one interval show as rates and latency quantiles of that interval.
  const seen = stream.frames.length
  const refused = []
  const smuggled = 'GET /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n'
  for (let i = 0; i < 3; i++) refused.push(rawExchange(port, smuggled, { localAddress: '127.0.0.5' }))
  const answers = await Promise.all(refused)
  t.true(answers.every((answer) => answer.startsWith('HTTP/1.1 400')))
  await Promise.all(Array.from({ length: 10 }, () => request(`${url}/api/x`, { localAddress: '127.0.0.3' })))
  const moved = await eventually(() => stream.frames.slice(seen).find((frame) => frame.rejectionsPerSecond.bad_request > 0), { timeout: 10_000 })
  t.truthy(moved, 'bad_request per second in a frame')
  t.true(moved.rejections.bad_request >= 3)
  t.like(moved.topOffenders.find((o) => o.address === '127.0.0.5'), { lastReason: 'bad_request' })
  const timed = stream.frames.slice(seen).find((frame) => frame.latencyCount > 0)
  t.truthy(timed, 'a frame with requests that ended in its interval')
  t.true(timed.latencyP50 > 0 && timed.latencyP99 >= timed.latencyP50, `p50 ${timed.latencyP50} ≤ p99 ${timed.latencyP99}`)
  t.true(stream.frames.slice(seen).some((frame) => frame.requestsPerSecond > 0))
})

test('a dashboard stream that ends does not count as a request lasting seconds in the latency', async (t) => {
  const { url } = await start(t)
  const leaving = readStream(t, `${url}/_floodgate/events`)
  const staying = readStream(t, `${url}/_floodgate/events`)
  t.truthy(await eventually(() => leaving.frames.length >= 2 && staying.frames.length >= 2, { timeout: 10_000 }))
  leaving.source.close()
  const seen = staying.frames.length
  await eventually(() => staying.frames.length >= seen + 3, { timeout: 10_000 })
  const after = staying.frames.slice(seen)
  t.true(after.length >= 3)
  // No other request was made: a latency here could only be the stream that ended.
  t.deepEqual(
    after.map((frame) => [frame.latencyCount, frame.latencyP99]),
    after.map(() => [0, null]),
  )
})

test('without authenticate the page and the stream answer loopback clients only, never a proxied request', async (t) => {
  const { url } = await start(t, { server: { trustProxy: ['127.0.0.1'] } })
  const page = await request(`${url}/_floodgate/`)
  t.is(page.status, 200)
  t.regex(page.headers['content-type'], /^text\/html/)
  t.regex(page.headers['content-security-policy'], /default-src 'none'; style-src 'sha256-[^']+'; script-src 'sha256-[^']+'/)
  t.regex(page.body.toString(), /<canvas id="chart-rejections"/)
  t.notRegex(page.body.toString(), /<script src=|rel="stylesheet"|(src|href)="(https?:)?\/\//, 'no outside resource: the page is one document')
  t.is((await request(`${url}/_floodgate`)).status, 200, 'the mount path itself serves the page too')
  // A client the trusted proxy forwards for is not loopback; nor is any forwarded request.
  for (const headers of [{ 'x-forwarded-for': '203.0.113.9' }, { forwarded: 'for=203.0.113.9' }, { 'x-forwarded-for': '127.0.0.1' }]) {
    for (const path of ['/_floodgate/', '/_floodgate/events']) {
      const refused = await request(`${url}${path}`, { headers })
      t.is(refused.status, 403, `${path} with ${JSON.stringify(headers)}`)
      t.regex(refused.body.toString(), /authenticate/)
    }
  }
  t.is((await request(`${url}/_floodgate/nothing`)).status, 404)
})

test('authenticate refusing gives 401 (with a Basic challenge) or its own response, for the page and the stream alike', async (t) => {
  const good = `Basic ${Buffer.from('ops:secret').toString('base64')}`
  const calls = []
  const { url } = await start(t, {
    dashboard: {
      authenticate: async (req, { client }) => {
        calls.push(client)
        if (new URL(req.url).searchParams.get('token') === 'banned') return new Response('go away', { status: 403 })
        return req.headers.get('authorization') === good
      },
    },
  })
  for (const path of ['/_floodgate/', '/_floodgate/events']) {
    const none = await request(`${url}${path}`)
    t.is(none.status, 401, path)
    t.is(none.headers['www-authenticate'], 'Basic realm="floodgate", charset="UTF-8"')
    t.is((await request(`${url}${path}`, { headers: { authorization: `Basic ${Buffer.from('ops:wrong').toString('base64')}` } })).status, 401)
    t.is((await request(`${url}${path}?token=banned`, { headers: { authorization: good } })).status, 403)
  }
  t.is((await request(`${url}/_floodgate/`, { headers: { authorization: good } })).status, 200)
  t.true(calls.every((client) => client === '127.0.0.1'), 'authenticate sees the client address')
  // The stream with the credentials: frames come.
  const stream = readStream(t, `${url}/_floodgate/events`, { fetch: (input, init) => fetch(input, { ...init, headers: { ...init.headers, authorization: good } }) })
  t.truthy(await eventually(() => stream.frames.length >= 1, { timeout: 10_000 }))
  // Without them, the eventsource client gets the 401 and gives up.
  const refused = readStream(t, `${url}/_floodgate/events`)
  t.truthy(await eventually(() => refused.errors.length >= 1 && refused.source.readyState === EventSource.CLOSED, { timeout: 10_000 }))
  t.is(refused.errors[0].code, 401)
})

/** The page and the stream over one HTTP/2 session (h2c, or TLS with ALPN as browsers speak it). */
async function overHttp2(t, url, connectOptions) {
  const session = http2.connect(url, connectOptions)
  t.teardown(() => session.destroy())
  const get = (path) =>
    new Promise((resolve, reject) => {
      const stream = session.request({ ':path': path })
      const result = { status: 0, text: '', stream }
      stream.setEncoding('utf8')
      stream.on('response', (headers) => {
        result.status = headers[':status']
        result.headers = headers
        resolve(result)
      })
      stream.on('data', (chunk) => (result.text += chunk))
      stream.on('error', reject)
    })
  t.is((await get('/_floodgate/')).status, 401)
  t.is((await get('/_floodgate/events')).status, 401)
  const page = await get('/_floodgate/?token=ok')
  t.is(page.status, 200)
  const events = await get('/_floodgate/events?token=ok')
  t.is(events.status, 200)
  t.regex(events.headers['content-type'], /^text\/event-stream/)
  t.truthy(await eventually(() => (events.text.match(/^event: frame$/gm) ?? []).length >= 2, { timeout: 10_000 }), 'two frames over HTTP/2')
  t.regex(events.text, /^event: history\ndata: \[/m)
  events.stream.close()
}

const tokenOk = { authenticate: (req) => new URL(req.url).searchParams.get('token') === 'ok' }

test('over HTTP/2 (h2c) the stream sends its frames and authenticate guards it alike', async (t) => {
  const { url } = await start(t, { server: { http2: true }, dashboard: tokenOk })
  await overHttp2(t, url)
})

needs(opensslTool, test)('over TLS (HTTP/2 by ALPN) the stream sends its frames and authenticate guards it alike', async (t) => {
  const certificate = selfSignedCertificate(['localhost'])
  const { port } = await start(t, { server: { tls: certificate }, dashboard: tokenOk })
  await overHttp2(t, `https://localhost:${port}`, { ca: certificate.cert, lookup: (host, options, callback) => callback(null, [{ address: '127.0.0.1', family: 4 }]) })
})

test('close() ends the open dashboard streams at once instead of waiting out the drain', async (t) => {
  const server = new Server()
  server.mount('/_floodgate', server.dashboard())
  const { url } = await server.listen({ port: 0, host: '127.0.0.1' })
  const stream = readStream(t, `${url}/_floodgate/events`)
  await eventually(() => stream.frames.length >= 1, { timeout: 10_000 })
  const started = Date.now()
  await server.close() // the default drain is 30 s
  t.true(Date.now() - started < 5000, `closed in ${Date.now() - started} ms`)
})

test('dashboard() checks its options', (t) => {
  const server = new Server()
  t.throws(() => server.dashboard({ authenticate: 'yes' }), { instanceOf: TypeError, message: /authenticate must be a function/ })
  t.throws(() => server.dashboard(null), { instanceOf: TypeError, message: /options must be an object/ })
})

// ---- the page in a browser, under attack ----

/** Holds `count` connections from 127.0.0.2, each sending a request head one line at a time (slowloris). */
function flood(port, count) {
  const sockets = []
  for (let i = 0; i < count; i++) {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.2' })
    socket.on('error', () => {})
    socket.on('connect', () => socket.write('GET /api/x HTTP/1.1\r\nHost: x\r\n'))
    const drip = setInterval(() => socket.writable && socket.write(`X-${i}: ${'a'.repeat(8)}\r\n`), 400)
    socket.on('close', () => clearInterval(drip))
    sockets.push(socket)
  }
  return () => sockets.forEach((socket) => socket.destroy())
}

/** Legitimate traffic from 127.0.0.3 until `stop()`: small JSON requests and a 256 KiB download now and then. */
function traffic(url) {
  let running = true
  const loops = Array.from({ length: 4 }, async (_, n) => {
    for (let i = 0; running; i++) {
      const path = n === 0 && i % 4 === 0 ? '/api/blob' : '/api/x'
      await request(`${url}${path}`, { localAddress: '127.0.0.3' }).catch(() => {})
    }
  })
  return async () => {
    running = false
    await Promise.all(loops)
  }
}

needs(chromiumTool, test.serial)('the page in Chromium shows the attack from 127.0.0.2 as it happens: connections, refusals by reason, the offender', async (t) => {
  t.timeout(90_000)
  const { chromium } = await import('playwright-core')
  const { url, port } = await start(t, {
    server: { maxConnectionsPerIp: 8, headerTimeout: '2s' },
    setup: (server) => {
      const live = new StreamingApp({ rateLimitRequests: 0 })
      live.sse('/events', { topics: ['ticks'] })
      live.ws('/socket', { message: (ws, data) => ws.send(data) })
      server.mount('/live', live)
    },
  })
  // A few open event streams and WebSockets (127.0.0.4), so every line of the first chart moves.
  const streams = await Promise.all(
    Array.from(
      { length: 3 },
      () =>
        new Promise((resolve, reject) => {
          const req = http.get(`${url}/live/events`, { localAddress: '127.0.0.4', agent: false }, (res) => {
            res.resume()
            resolve(res.statusCode)
          })
          req.on('error', reject)
          t.teardown(() => req.destroy())
        }),
    ),
  )
  t.deepEqual(streams, [200, 200, 200])
  const sockets = await Promise.all(Array.from({ length: 2 }, () => wsOpen(t, `ws://127.0.0.1:${port}/live/socket`, { localAddress: '127.0.0.4' })))
  t.is(sockets.length, 2)

  const browser = await chromium.launch({ executablePath: chromiumTool.path, args: ['--no-sandbox', '--disable-gpu'] })
  t.teardown(() => browser.close())
  const page = await browser.newPage({ viewport: { width: 1440, height: 1000 }, colorScheme: 'light' })
  const problems = []
  page.on('pageerror', (error) => problems.push(String(error)))
  page.on('console', (message) => message.type() === 'error' && problems.push(message.text()))
  await page.goto(`${url}/_floodgate`)
  await page.waitForSelector('#status[data-state="live"]', { timeout: 15_000 })
  const value = async (selector) => Number(await page.getAttribute(selector, 'data-value'))
  await eventually(async () => (await value('#eventStreams')) === 3 && (await value('#websockets')) === 2, { timeout: 10_000 })
  t.is(await value('#eventStreams'), 3, 'event streams')
  t.is(await value('#websockets'), 2, 'WebSockets')
  const before = await value('#connections')

  const stopTraffic = traffic(url)
  await sleep(3000)
  // The attack: 40 connections from 127.0.0.2 at once (8 held, 32 refused 429), the held ones
  // dripping their heads until headerTimeout (408); three waves.
  let peak = 0
  for (let wave = 0; wave < 3; wave++) {
    const stop = flood(port, 40)
    const until = Date.now() + 2800
    while (Date.now() < until) {
      peak = Math.max(peak, await value('#connections'))
      await sleep(200)
    }
    stop()
    await sleep(700)
  }
  t.true(peak >= before + 8, `the held connections show: ${before} before, ${peak} at the peak`)

  const total = (reason) => value(`#reasons tr[data-reason="${reason}"] td:last-child`)
  t.truthy(await eventually(async () => (await total('connection_limit')) >= 90 && (await total('header_timeout')) >= 16, { timeout: 10_000 }))
  t.true((await total('connection_limit')) >= 90, 'connection_limit total')
  t.true((await total('header_timeout')) >= 16, 'header_timeout total')
  const offender = page.locator('#offenders tr[data-client="127.0.0.2"]')
  t.is(await offender.count(), 1, '127.0.0.2 is listed')
  t.true(Number(await offender.locator('td').nth(1).getAttribute('data-value')) >= 100)
  t.is(await page.locator('#offenders tr[data-client="127.0.0.3"]').count(), 0, 'the legitimate client is not')
  t.true((await value('#requestsPerSecond')) > 0 || (await value('#total-requests')) > 0)
  t.true((await value('#p99')) > 0, 'latency shows')

  // The rejections chart holds drawn bars: coloured pixels (its grid and labels are grey).
  const painted = await page.evaluate(() => {
    const canvas = document.getElementById('chart-rejections')
    const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height)
    let count = 0
    for (let i = 0; i < data.length; i += 4) if (data[i + 3] > 200 && Math.max(data[i], data[i + 1], data[i + 2]) - Math.min(data[i], data[i + 1], data[i + 2]) > 80) count++
    return count
  })
  t.true(painted > 50, `bars on the rejections chart (${painted} coloured pixels)`)

  // One more wave, so the screenshot shows the attack live.
  const stop = flood(port, 40)
  await sleep(2500)
  mkdirSync(join(root, 'target'), { recursive: true })
  await page.screenshot({ path: join(root, 'target', 'dashboard.png'), fullPage: true })
  stop()
  await stopTraffic()
  t.deepEqual(problems, [], 'no script error on the page')
})
