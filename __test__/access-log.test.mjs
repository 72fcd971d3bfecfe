// The access log (`accessLog`): one pino-shaped JSON line per request, from Rust, over
// HTTP/1.1, HTTP/2 and TLS; refusals with their reason; rotation; stdout; the bounded callback.
import test from 'ava'
import http2 from 'node:http2'
import https from 'node:https'
import { spawn } from 'node:child_process'
import { readFileSync, renameSync, existsSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { fixture, eventually, needs, opensslTool, selfSignedCertificate, request, Server, StreamingApp, wsOpen, connect, sleep } from './helpers.mjs'

const KiB = 1024
const FILE = Buffer.alloc(64 * KiB, 7)
const dir = fixture({ 'file.bin': FILE })
test.after.always(() => dir.cleanup())
const certificate = opensslTool.missing ? undefined : selfSignedCertificate(['localhost'])
const opensslTest = needs(opensslTool, test)

let logs = 0
const logPath = () => join(dir.root, `access-${process.pid}-${++logs}.log`)

/** Reads the log's lines, each parsed. */
function lines(path) {
  if (!existsSync(path)) return []
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line))
}

/** Waits for a line whose url ends with `url` (and that `match` accepts). */
async function lineFor(path, url, match = () => true) {
  const found = await eventually(() => lines(path).find((line) => line.req.url.endsWith(url) && match(line)), { timeout: 10_000 })
  if (!found) throw new Error(`no line for ${url} in ${JSON.stringify(lines(path), null, 1)}`)
  return found
}

/** pino's fields and ours, with their types. */
function pinoShaped(t, line) {
  t.is(typeof line.level, 'number')
  t.true(Number.isInteger(line.time) && Math.abs(Date.now() - line.time) < 120_000, 'time: ms since the epoch')
  t.is(line.pid, process.pid)
  t.is(typeof line.hostname, 'string')
  t.is(typeof line.msg, 'string')
  t.is(typeof line.req.method, 'string')
  t.is(typeof line.req.url, 'string')
  t.is(line.req.remoteAddress, '127.0.0.1')
  t.true(line.req.remotePort > 0)
  t.is(typeof line.res.statusCode, 'number')
  t.true(line.responseTime >= 0)
  t.true(Number.isInteger(line.bytesIn) && Number.isInteger(line.bytesOut))
}

/** A server with a JS handler, files, uploads, an event stream and a WebSocket route. */
async function start(t, serverOptions = {}) {
  const path = logPath()
  const server = new Server({ accessLog: path, ...serverOptions })
  server.mount('/api', async (req) => {
    const body = req.method === 'POST' ? await req.text() : ''
    return new Response(`hello ${body.length}`)
  })
  const app = new StreamingApp({ rateLimitRequests: 0, rateLimitBandwidth: 0, maxUploadSize: 256 * KiB })
  app.files('/files', { root: dir.root })
  app.uploads('/up', { dir: dir.root })
  app.sse('/events', { topics: ['news'] })
  app.ws('/ws', { message: (ws, data) => ws.send(data) })
  server.mount('/stream', app)
  const address = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  return { server, path, port: address.port, url: address.url }
}

test('off by default: a server without accessLog writes no line and counts none', async (t) => {
  const server = new Server()
  server.mount('/api', () => new Response('ok'))
  const { url } = await server.listen({ port: 0 })
  t.teardown(() => server.close({ drain: 0 }))
  t.is((await request(`${url}/api`)).status, 200)
  t.is(server.stats().accessLogLines, 0)
  t.is(server.stats().accessLogDropped, 0)
})

test('a bad accessLog value is a TypeError naming the option', (t) => {
  for (const accessLog of [42, '', true, { callback: false }, ['x']]) {
    t.throws(() => new Server({ accessLog }), { instanceOf: TypeError, message: /accessLog/ }, JSON.stringify(accessLog))
  }
  t.throws(() => new Server({ accessLogPerSecond: -1 }), { instanceOf: TypeError, message: /accessLogPerSecond/ })
  t.throws(() => new Server({ accessLogQueue: 0 }), { instanceOf: TypeError, message: /accessLogQueue/ })
  t.throws(() => new Server({ metrics: 'no' }), { instanceOf: TypeError, message: /metrics/ })
})

test('a file it cannot open fails listen, naming accessLog', async (t) => {
  const server = new Server({ accessLog: join(dir.root, 'no-such-dir', 'a.log') })
  await t.throwsAsync(server.listen({ port: 0 }), { message: /accessLog: cannot open/ })
})

test('HTTP/1.1: a JS request, a file, a range, an upload, an event stream and a WebSocket session', async (t) => {
  const { path, port, url } = await start(t)
  t.is((await request(`${url}/api/hi?x=1`)).status, 200)
  const js = await lineFor(path, '/api/hi?x=1')
  pinoShaped(t, js)
  t.like(js, { level: 30, msg: 'request completed', req: { method: 'GET', protocol: 'http/1.1', tls: false }, res: { statusCode: 200 }, bytesOut: 'hello 0'.length })

  t.is((await request(`${url}/stream/files/file.bin`)).body.length, FILE.length)
  const file = await lineFor(path, '/files/file.bin')
  t.like(file, { res: { statusCode: 200 }, bytesOut: FILE.length })

  const range = await request(`${url}/stream/files/file.bin`, { headers: { range: 'bytes=10-19' } })
  t.is(range.status, 206)
  t.like(await lineFor(path, '/files/file.bin', (line) => line.res.statusCode === 206), { bytesOut: 10 })

  const body = Buffer.alloc(10 * KiB, 1)
  const uploaded = await fetch(`${url}/stream/up/a.bin`, { method: 'PUT', body })
  t.is(uploaded.status, 201)
  t.like(await lineFor(path, '/up/a.bin'), { req: { method: 'PUT' }, res: { statusCode: 201 }, bytesIn: body.length })

  const posted = await fetch(`${url}/api/echo`, { method: 'POST', body: 'x'.repeat(300) })
  t.is(await posted.text(), 'hello 300')
  t.like(await lineFor(path, '/api/echo'), { bytesIn: 300 })

  // An event stream is logged when it ends, with its duration and bytes.
  const socket = await connect(port)
  socket.write('GET /stream/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n')
  let received = ''
  socket.on('data', (chunk) => (received += chunk))
  await eventually(() => received.includes('\r\n\r\n'))
  await sleep(300)
  t.is(lines(path).filter((line) => line.req.url.endsWith('/events')).length, 0, 'not logged while open')
  socket.destroy()
  const sse = await lineFor(path, '/stream/events')
  t.like(sse, { msg: 'event stream ended', res: { statusCode: 200 } })
  t.true(sse.responseTime >= 250, `${sse.responseTime}`)
  t.true(sse.bytesOut > 0)

  const ws = await wsOpen(t, `ws://127.0.0.1:${port}/stream/ws`)
  ws.client.send('ping-pong')
  await eventually(() => ws.texts.length === 1)
  ws.client.close(1000)
  await ws.closing
  const session = await lineFor(path, '/stream/ws')
  t.like(session, { msg: 'websocket closed', res: { statusCode: 101 }, closeCode: 1000 })
  t.true(session.bytesIn > 'ping-pong'.length && session.bytesOut > 'ping-pong'.length)
})

test('multipart and tus uploads: one line per request with the body bytes read', async (t) => {
  const path = logPath()
  const server = new Server({ accessLog: path })
  const app = new StreamingApp({ rateLimitRequests: 0, maxUploadSize: 256 * KiB })
  app.uploads('/form', { dir: dir.root })
  app.uploads('/tus', { dir: dir.root, resumable: {} })
  server.mount('/stream', app)
  const { url } = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  const form = new FormData()
  form.append('photo', new Blob([Buffer.alloc(20 * KiB, 3)], { type: 'image/png' }), 'p.png')
  const posted = await fetch(`${url}/stream/form`, { method: 'POST', body: form })
  t.is(posted.status, 201)
  const multipart = await lineFor(path, '/stream/form')
  t.like(multipart, { req: { method: 'POST' }, res: { statusCode: 201 } })
  t.true(multipart.bytesIn > 20 * KiB, `${multipart.bytesIn}`)

  const tus = { 'tus-resumable': '1.0.0' }
  const created = await fetch(`${url}/stream/tus`, { method: 'POST', headers: { ...tus, 'upload-length': '3000' } })
  t.is(created.status, 201)
  const location = new URL(created.headers.get('location'), url).pathname
  const patched = await fetch(`${url}${location}`, {
    method: 'PATCH',
    headers: { ...tus, 'upload-offset': '0', 'content-type': 'application/offset+octet-stream' },
    body: Buffer.alloc(3000, 4),
  })
  t.is(patched.status, 204)
  t.like(await lineFor(path, location, (line) => line.req.method === 'PATCH'), { res: { statusCode: 204 }, bytesIn: 3000 })
  t.like(await lineFor(path, '/stream/tus', (line) => line.req.method === 'POST'), { res: { statusCode: 201 }, bytesIn: 0 })
})

test('HTTP/2 (prior knowledge): a JS request, a file, a range, an upload and an event stream', async (t) => {
  const { path, port } = await start(t, { http2: true })
  const client = http2.connect(`http://127.0.0.1:${port}`)
  t.teardown(() => client.close())
  const get = (p, headers = {}, body) =>
    new Promise((resolve, reject) => {
      const stream = client.request({ ':path': p, ':method': body ? 'PUT' : 'GET', ...headers })
      const chunks = []
      let status
      stream.on('response', (h) => (status = h[':status']))
      stream.on('data', (c) => chunks.push(c))
      stream.on('end', () => resolve({ status, body: Buffer.concat(chunks) }))
      stream.on('error', reject)
      stream.end(body)
    })
  t.is((await get('/api/h2')).status, 200)
  t.like(await lineFor(path, '/api/h2'), { req: { protocol: 'h2' }, res: { statusCode: 200 } })
  t.is((await get('/stream/files/file.bin')).body.length, FILE.length)
  t.like(await lineFor(path, '/files/file.bin'), { req: { protocol: 'h2' }, bytesOut: FILE.length })
  t.is((await get('/stream/files/file.bin', { range: 'bytes=0-99' })).status, 206)
  t.like(await lineFor(path, '/files/file.bin', (l) => l.res.statusCode === 206), { bytesOut: 100 })
  t.is((await get('/stream/up/h2.bin', {}, Buffer.alloc(5000, 2))).status, 201)
  t.like(await lineFor(path, '/up/h2.bin'), { req: { protocol: 'h2', method: 'PUT' }, bytesIn: 5000 })
  const events = client.request({ ':path': '/stream/events', accept: 'text/event-stream' })
  await new Promise((resolve) => events.once('response', resolve))
  events.close(http2.constants.NGHTTP2_CANCEL)
  t.like(await lineFor(path, '/stream/events'), { msg: 'event stream ended', req: { protocol: 'h2' } })
})

opensslTest('TLS: HTTP/1.1 and h2 requests, an event stream and a WebSocket session are logged with tls: true', async (t) => {
  const { path, port } = await start(t, { tls: certificate, http2: true })
  const agent = new https.Agent({ ca: certificate.cert, servername: 'localhost' })
  t.teardown(() => agent.destroy())
  const get = (p) =>
    new Promise((resolve, reject) => {
      https.get({ host: '127.0.0.1', port, path: p, agent }, (res) => {
        res.resume()
        res.on('end', () => resolve(res.statusCode))
      }).on('error', reject)
    })
  t.is(await get('/api/tls'), 200)
  const line = await lineFor(path, '/api/tls')
  pinoShaped(t, line)
  t.like(line, { req: { tls: true, protocol: 'http/1.1' } })
  t.is(await get('/stream/files/file.bin'), 200)
  t.like(await lineFor(path, '/files/file.bin'), { req: { tls: true }, bytesOut: FILE.length })

  const client = http2.connect(`https://localhost:${port}`, { ca: certificate.cert, host: '127.0.0.1', lookup: (h, o, cb) => (o?.all ? cb(null, [{ address: '127.0.0.1', family: 4 }]) : cb(null, '127.0.0.1', 4)) })
  t.teardown(() => client.close())
  const stream = client.request({ ':path': '/api/tls-h2' })
  stream.resume()
  await new Promise((resolve) => stream.on('end', resolve))
  t.like(await lineFor(path, '/api/tls-h2'), { req: { tls: true, protocol: 'h2' } })

  const events = await new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, path: '/stream/events', agent: false, ca: certificate.cert, servername: 'localhost', headers: { accept: 'text/event-stream' } }, resolve)
    req.on('error', reject)
  })
  events.destroy()
  t.like(await lineFor(path, '/stream/events'), { msg: 'event stream ended', req: { tls: true } })

  const ws = await wsOpen(t, `wss://localhost:${port}/stream/ws`, { ca: certificate.cert, lookup: (h, o, cb) => (o?.all ? cb(null, [{ address: '127.0.0.1', family: 4 }]) : cb(null, '127.0.0.1', 4)) })
  ws.client.close(1000)
  await ws.closing
  t.like(await lineFor(path, '/stream/ws'), { msg: 'websocket closed', req: { tls: true }, closeCode: 1000 })
})

test('a refusal is logged at level 40 with its reason: 413 body_too_large, 429 rate_limited, 404', async (t) => {
  const path = logPath()
  const server = new Server({ accessLog: path })
  const app = new StreamingApp({ rateLimitRequests: 1, rateLimitWindow: '1m', maxUploadSize: KiB })
  app.uploads('/up', { dir: dir.root })
  server.mount('/limited', app)
  const { url } = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  const tooLarge = await fetch(`${url}/limited/up/big.bin`, { method: 'PUT', body: Buffer.alloc(4 * KiB) })
  t.is(tooLarge.status, 413)
  t.like(await lineFor(path, '/up/big.bin'), { level: 40, msg: 'request refused', res: { statusCode: 413 }, reason: 'body_too_large' })
  t.is((await fetch(`${url}/limited/up/again.bin`, { method: 'PUT', body: 'x' })).status, 429)
  t.like(await lineFor(path, '/up/again.bin'), { level: 40, res: { statusCode: 429 }, reason: 'rate_limited' })
  t.is((await fetch(`${url}/nowhere`)).status, 404)
  t.like(await lineFor(path, '/nowhere'), { level: 40, res: { statusCode: 404 }, reason: 'not_found' })
})

test('reopenLogs after the file was renamed: new lines go to a new file, none lost', async (t) => {
  const { server, path, url } = await start(t)
  for (let i = 0; i < 20; i++) await request(`${url}/api/before-${i}`)
  await eventually(() => lines(path).length === 20)
  renameSync(path, `${path}.1`)
  // Until reopened, lines still go to the renamed file (as with nginx's USR1).
  await request(`${url}/api/between`)
  server.reopenLogs()
  for (let i = 0; i < 20; i++) await request(`${url}/api/after-${i}`)
  await eventually(() => lines(path).length === 20)
  const old = lines(`${path}.1`).map((line) => line.req.url)
  const fresh = lines(path).map((line) => line.req.url)
  t.is(old.length, 21)
  t.true(old.includes('/api/between'))
  t.deepEqual(fresh, Array.from({ length: 20 }, (_, i) => `/api/after-${i}`))
  t.is(server.stats().accessLogLines, 41)
  t.is(server.stats().accessLogDropped, 0)
  t.regex(server.metrics(), /^floodgate_access_log_lines_total 41$/m)
  t.regex(server.metrics(), /^floodgate_access_log_dropped_total 0$/m)
})

test("'stdout': lines on the process's standard output, flushed by close", async (t) => {
  const script = `
    const { Server } = require(${JSON.stringify(fileURLToPath(new URL('../index.js', import.meta.url)))})
    const server = new Server({ accessLog: 'stdout' })
    server.mount('/api', () => new Response('ok'))
    server.listen({ port: 0 }).then(async ({ url }) => {
      for (let i = 0; i < 5; i++) await fetch(url + '/api/n' + i).then((r) => r.text())
      await server.close({ drain: 100 })
    })`
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => child.kill('SIGKILL'))
  let out = ''
  child.stdout.on('data', (chunk) => (out += chunk))
  const code = await new Promise((resolve) => child.on('exit', resolve))
  t.is(code, 0)
  const entries = out.split('\n').filter(Boolean).map((line) => JSON.parse(line))
  t.deepEqual(entries.map((entry) => entry.req.url), [0, 1, 2, 3, 4].map((i) => `/api/n${i}`))
  t.true(entries.every((entry) => entry.pid === child.pid && entry.res.statusCode === 200))
})

test('the callback form gets each entry, at most accessLogPerSecond a second; the rest counted and reported as dropped', async (t) => {
  const entries = []
  const server = new Server({ accessLog: (entry) => entries.push({ entry, at: Date.now() }), accessLogPerSecond: 20 })
  server.mount('/api', () => new Response('ok'))
  const { url } = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  const started = Date.now()
  const flood = 300
  for (let i = 0; i < flood; i += 30) {
    await Promise.all(Array.from({ length: 30 }, (_, j) => fetch(`${url}/api/f${i + j}`).then((r) => r.text())))
  }
  await eventually(() => server.stats().accessLogLines + server.stats().accessLogDropped === flood)
  const seconds = Math.ceil((Date.now() - started) / 1000) + 1
  const { accessLogLines, accessLogDropped } = server.stats()
  t.is(accessLogLines + accessLogDropped, flood)
  t.true(accessLogDropped > 0, 'a flood is cut')
  t.true(accessLogLines <= 20 * seconds, `${accessLogLines} lines in ${seconds} s`)
  await eventually(() => entries.length === accessLogLines)
  t.is(entries.length, accessLogLines)
  t.like(entries[0].entry, { level: 30, res: { statusCode: 200 }, msg: 'request completed' })
  // A second later the next entry says how many were left out.
  await sleep(1100)
  await fetch(`${url}/api/last`).then((r) => r.text())
  const last = await eventually(() => entries.find(({ entry }) => entry.req.url === '/api/last'))
  const reported = entries.reduce((sum, { entry }) => sum + (entry.dropped ?? 0), 0)
  t.true(last.entry.dropped > 0)
  t.is(reported, server.stats().accessLogDropped)
})

test('metrics: false serves as before, without histograms', async (t) => {
  const server = new Server({ metrics: false })
  server.mount('/api', () => new Response('ok'))
  const { url } = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  t.is((await request(`${url}/api`)).status, 200)
  t.is(server.stats().requestsTotal, 1)
  t.notRegex(server.metrics(), /floodgate_request_duration_seconds_count\{[^}]*\} [1-9]/)
})
