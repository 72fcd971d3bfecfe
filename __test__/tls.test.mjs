// TLS: certificates by SNI, ALPN h2 / http/1.1, certificates replaced live, handshakes bounded
// and counted by reason, and everything served in cleartext served the same over TLS with
// every protection in place (files, JS handlers, uploads, event streams, WebSockets).
import test from 'ava'
import https from 'node:https'
import http2 from 'node:http2'
import tls from 'node:tls'
import net from 'node:net'
import { randomBytes } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fixture, eventually, needs, chromiumTool, openInChromium, opensslTool, selfSignedCertificate, Server, StreamingApp, WebSocketClient, curlTool, curl, sleep } from './helpers.mjs'

const MiB = 1024 * 1024
const opensslTest = needs(opensslTool, test)
const certificates = opensslTool.missing
  ? {}
  : {
      main: selfSignedCertificate(['localhost']),
      other: selfSignedCertificate(['other.test']),
      wildcard: selfSignedCertificate(['*.wild.test']),
      renewed: selfSignedCertificate(['localhost']),
    }
const FILE = randomBytes(3 * MiB + 7)
// Large enough that a client that stops reading cannot have it all in the socket buffers.
const dir = fixture({ 'file.bin': FILE, 'large.bin': Buffer.alloc(48 * MiB, 1), 'small.txt': 'hello\n' })
const toLoopback = (host, options, callback) =>
  options?.all ? callback(null, [{ address: '127.0.0.1', family: 4 }]) : callback(null, '127.0.0.1', 4)

/** A TLS 1.0 ClientHello (one RSA cipher suite, no extensions), as an outdated client sends. */
function tls10ClientHello() {
  const body = Buffer.concat([Buffer.from([0x03, 0x01]), randomBytes(32), Buffer.from([0x00, 0x00, 0x02, 0x00, 0x2f, 0x01, 0x00])])
  const handshake = Buffer.concat([Buffer.from([0x01, 0x00, body.length >> 8, body.length & 0xff]), body])
  return Buffer.concat([Buffer.from([0x16, 0x03, 0x01, handshake.length >> 8, handshake.length & 0xff]), handshake])
}
test.after.always(() => dir.cleanup())

/** A TLS server with files, a JS handler, uploads, an event stream and a WebSocket route. */
async function startTls(t, { server: serverOptions = {}, streaming = {} } = {}) {
  const { main, other, wildcard } = certificates
  const server = new Server({ tls: { ...main, sni: { 'other.test': other, '*.wild.test': wildcard } }, ...serverOptions })
  const app = new StreamingApp({ rateLimitBandwidth: 0, rateLimitRequests: 0, ...streaming })
  app.files('/files', { root: dir.root })
  app.uploads('/up', { dir: dir.root })
  app.sse('/events', { topics: ['news'] })
  app.ws('/ws', { message: (socket, data) => socket.send(data) })
  app.get('/hello', (req) => Response.json({ hello: new URL(req.url).protocol }))
  server.mount('/stream', app)
  const { url, port } = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  return { server, url, port }
}

/** An https request trusting `ca`; resolves { status, headers, body, socket details }. */
function get(port, path, { ca = certificates.main.cert, servername = 'localhost', method = 'GET', headers = {}, body, agent = false } = {}) {
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port, path, method, headers, ca, servername, agent }, (res) => {
      const chunks = []
      const protocol = res.socket.getProtocol()
      const localPort = res.socket.localPort
      res.on('data', (chunk) => chunks.push(chunk))
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks), protocol, localPort }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(body)
  })
}

/** The certificate the server presents for `servername`. */
function presented(port, servername) {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false }, () => {
      const cert = socket.getPeerX509Certificate()
      socket.destroy()
      resolve(cert)
    })
    socket.on('error', reject)
  })
}

opensslTest('files, ranges, a JS handler and an upload over TLS; no sendfile under TLS', async (t) => {
  const { url, port, server } = await startTls(t)
  t.regex(url, /^https:\/\/127\.0\.0\.1:\d+$/)
  const file = await get(port, '/stream/files/file.bin')
  t.is(file.status, 200)
  t.true(file.body.equals(FILE))
  const range = await get(port, '/stream/files/file.bin', { headers: { range: 'bytes=1000-2000999' } })
  t.is(range.status, 206)
  t.true(range.body.equals(FILE.subarray(1000, 2001000)))
  t.deepEqual(JSON.parse((await get(port, '/stream/hello')).body), { hello: 'https:' })
  const upload = await get(port, '/stream/up/sent.bin', { method: 'PUT', body: FILE.subarray(0, MiB) })
  t.is(upload.status, 201)
  t.true(readFileSync(join(dir.root, 'sent.bin')).equals(FILE.subarray(0, MiB)))
  t.is(server.stats().bytesSentZeroCopy, 0)
})

opensslTest('TLS 1.3 and 1.2 both work; ALPN h2 serves HTTP/2 to an http2 client', async (t) => {
  const { port } = await startTls(t)
  for (const version of ['TLSv1.3', 'TLSv1.2']) {
    const socket = await new Promise((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ca: certificates.main.cert, minVersion: version, maxVersion: version }, () => resolve(s))
      s.on('error', reject)
    })
    t.is(socket.getProtocol(), version)
    socket.destroy()
  }
  const client = http2.connect(`https://localhost:${port}`, { ca: certificates.main.cert, host: '127.0.0.1', lookup: toLoopback })
  t.teardown(() => client.close())
  const { headers, body } = await new Promise((resolve, reject) => {
    const req = client.request({ ':path': '/stream/files/file.bin' })
    const chunks = []
    let headers
    req.on('response', (h) => (headers = h))
    req.on('data', (chunk) => chunks.push(chunk))
    req.on('end', () => resolve({ headers, body: Buffer.concat(chunks) }))
    req.on('error', reject)
  })
  t.is(headers[':status'], 200)
  t.true(body.equals(FILE))
  t.is(client.alpnProtocol, 'h2')
})

needs(curlTool, opensslTest)('curl --http2 negotiates h2 by ALPN; tls.http2: false keeps it on HTTP/1.1', async (t) => {
  const { main } = certificates
  const caFile = join(dir.root, 'ca.pem')
  writeFileSync(caFile, main.cert)
  const { port } = await startTls(t)
  const args = (p) => ['-s', '-o', '/dev/null', '-w', '%{http_code} %{http_version}', '--cacert', caFile, '--resolve', `localhost:${p}:127.0.0.1`, '--http2', `https://localhost:${p}/stream/files/small.txt`]
  t.is((await curl(args(port))).stdout.toString(), '200 2')
  const { port: h1Port } = await startTls(t, { server: { tls: { ...main, http2: false } } })
  t.is((await curl(args(h1Port))).stdout.toString(), '200 1.1')
})

opensslTest('SNI chooses the certificate: exact names, a wildcard, the default otherwise', async (t) => {
  const { port } = await startTls(t)
  t.regex((await presented(port, 'other.test')).subject, /CN=other\.test/)
  t.regex((await presented(port, 'a.wild.test')).subject, /CN=\*\.wild\.test/)
  t.regex((await presented(port, 'localhost')).subject, /CN=localhost/)
  t.regex((await presented(port, 'unknown.test')).subject, /CN=localhost/)
  const viaSni = await get(port, '/stream/files/small.txt', { ca: certificates.other.cert, servername: 'other.test' })
  t.is(viaSni.body.toString(), 'hello\n')
})

opensslTest('setTls replaces the certificate for new handshakes; an open connection goes on', async (t) => {
  const { port, server } = await startTls(t)
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  const before = await presented(port, 'localhost')
  const first = await get(port, '/stream/files/small.txt', { agent })
  t.is(first.status, 200)
  server.setTls(certificates.renewed)
  const after = await presented(port, 'localhost')
  t.not(after.fingerprint256, before.fingerprint256)
  t.is(after.fingerprint256, new (await import('node:crypto')).X509Certificate(certificates.renewed.cert).fingerprint256)
  // The kept-alive connection still works with the certificate it started with.
  const reused = await get(port, '/stream/files/small.txt', { agent })
  t.is(reused.status, 200)
  t.is(reused.localPort, first.localPort, 'the same connection')
  // A bad replacement is refused and changes nothing.
  t.throws(() => server.setTls({ cert: certificates.main.cert, key: certificates.other.key }), { instanceOf: TypeError, message: /tls: the key does not belong/ })
  t.throws(() => server.setTls({ cert: 'nope.pem', key: 'nope.pem' }), { instanceOf: TypeError, message: /tls\.cert: cannot read/ })
  t.is((await presented(port, 'localhost')).fingerprint256, after.fingerprint256)
  const plain = new Server()
  await plain.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => plain.close({ drain: 0 }))
  t.throws(() => plain.setTls(certificates.main), { code: 'ERR_FLOODGATE_STATE' })
})

opensslTest('bad tls options are TypeErrors naming the option', (t) => {
  const { main, other } = certificates
  t.throws(() => new Server({ tls: { cert: main.cert } }), { instanceOf: TypeError, message: /tls.*key/ })
  t.throws(() => new Server({ tls: { cert: 'not pem', key: main.key } }), { instanceOf: TypeError, message: /tls\.cert/ })
  t.throws(() => new Server({ tls: { cert: main.cert, key: other.key } }), { instanceOf: TypeError, message: /does not belong/ })
  t.throws(() => new Server({ tls: { ...main, sni: { 'a b': other } } }), { instanceOf: TypeError, message: /tls\.sni\["a b"\]: not a host name/ })
  t.throws(() => new Server({ tls: { ...main, ciphers: 'x' } }), { instanceOf: TypeError, message: /tls.*ciphers/ })
})

opensslTest('a handshake is a head: silence, garbage, old versions and no shared cipher are closed and counted', async (t) => {
  const { port, server } = await startTls(t, { server: { headerTimeout: 1000 } })
  const closedWithin = async (write) => {
    const started = Date.now()
    const socket = net.connect({ port, host: '127.0.0.1' })
    socket.on('error', () => {})
    socket.on('data', () => {})
    await new Promise((resolve) => socket.on('connect', resolve))
    write?.(socket)
    await new Promise((resolve) => socket.on('close', resolve))
    return Date.now() - started
  }
  const silent = await closedWithin()
  t.true(silent >= 900 && silent < 4000, `closed after ${silent} ms`)
  const counted = (reason) => eventually(() => server.stats().rejections[reason] === 1)
  t.true(await counted('tls_handshake_timeout'))
  // Plain HTTP to the TLS port: not a handshake.
  await closedWithin((socket) => socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'))
  t.true(await counted('tls_bad_message'))
  // A client that offers only TLS 1.0 (Node's OpenSSL will not send one: written by hand).
  await closedWithin((socket) => socket.write(tls10ClientHello()))
  t.true(await counted('tls_bad_version'), JSON.stringify(server.stats().rejections))
  // TLS 1.2 with only a cipher suite rustls does not have (RSA key exchange).
  const noCipher = await new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, maxVersion: 'TLSv1.2', ciphers: 'AES128-SHA', rejectUnauthorized: false })
    socket.on('error', resolve)
    socket.on('secureConnect', () => resolve(new Error('connected')))
  })
  t.not(noCipher.message, 'connected')
  t.true(await eventually(() => server.stats().rejections.tls_no_shared_cipher === 1), JSON.stringify(server.stats().rejections))
  // A client that does not trust the certificate ends the handshake with an alert.
  const untrusted = await new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername: 'localhost' })
    socket.on('error', resolve)
  })
  t.regex(untrusted.code, /SELF_SIGNED|UNABLE_TO_VERIFY|DEPTH_ZERO/)
  t.true(await eventually(() => server.stats().rejections.tls_handshake_failed === 1), JSON.stringify(server.stats().rejections))
  t.true(await eventually(() => server.stats().connectionsLive === 0))
  // And a good client passes beside them.
  t.is((await get(port, '/stream/files/small.txt')).status, 200)
})

opensslTest('a connection closed before its first byte is no failed handshake: not counted, no ban strike', async (t) => {
  // A balancer's TCP health check or a browser's unused preconnect opens and closes.
  const { port, server } = await startTls(t, { server: { ban: { after: 2, within: '1m', for: '1m' } } })
  for (let i = 0; i < 5; i++) {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.11' })
    socket.on('error', () => {})
    await new Promise((resolve) => socket.on('connect', resolve))
    socket.end()
    await new Promise((resolve) => socket.on('close', resolve))
  }
  t.true(await eventually(() => server.stats().connectionsLive === 0))
  t.is(server.stats().rejections.tls_handshake_failed ?? 0, 0, JSON.stringify(server.stats().rejections))
  t.deepEqual(server.bans(), [])
  // The same address is served.
  const served = await get(port, '/stream/files/small.txt', { agent: new https.Agent({ localAddress: '127.0.0.11' }) })
  t.is(served.status, 200)
})

opensslTest('the per-address cap holds during handshakes: silent TLS connections over it get closed', async (t) => {
  const { port, server } = await startTls(t, { server: { maxConnectionsPerIp: 3, headerTimeout: 5000 } })
  const sockets = []
  for (let i = 0; i < 5; i++) {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.9' })
    socket.on('error', () => {})
    socket.on('data', () => {})
    sockets.push(socket)
  }
  t.teardown(() => sockets.forEach((s) => s.destroy()))
  t.true(await eventually(() => server.stats().rejections.connection_limit === 2))
  // Another address is served meanwhile.
  const other = await get(port, '/stream/files/small.txt', { agent: new https.Agent({ localAddress: '127.0.0.10' }) })
  t.is(other.status, 200)
})

opensslTest('protections hold over TLS: slow head 408, stalled reader at sendTimeout, bandwidth, rate limit', async (t) => {
  const { port, server } = await startTls(t, {
    server: { headerTimeout: 1000 },
    streaming: { sendTimeout: 1000, rateLimitRequests: 3, rateLimitWindow: '1m' },
  })
  const secure = () =>
    new Promise((resolve, reject) => {
      const socket = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ca: certificates.main.cert }, () => resolve(socket))
      socket.on('error', reject)
    })
  // A head dripped after the handshake: 408 at headerTimeout from accept.
  const slow = await secure()
  const received = []
  slow.on('data', (chunk) => received.push(chunk))
  slow.write('GET /stream/files/small.txt HTTP/1.1\r\n')
  await new Promise((resolve) => slow.on('close', resolve))
  t.regex(Buffer.concat(received).toString(), /^HTTP\/1\.1 408 /)
  t.is(server.stats().rejections.header_timeout, 1)
  // A reader that stops reading is cut at sendTimeout.
  const stalled = await secure()
  stalled.on('error', () => {})
  stalled.pause()
  stalled.write('GET /stream/files/large.bin HTTP/1.1\r\nHost: x\r\n\r\n')
  t.true(await eventually(() => server.stats().rejections.send_timeout === 1, { timeout: 8000 }))
  stalled.destroy()
  // The request rate limit (3 a minute, earlier requests included): then 429.
  const statuses = []
  for (let i = 0; i < 4; i++) statuses.push((await get(port, '/stream/files/small.txt')).status)
  t.is(statuses.at(-1), 429, statuses.join(' '))
  t.true(server.stats().rejections.rate_limited >= 1)
})

opensslTest('bandwidth shaping over TLS keeps its rate (+3 %)', async (t) => {
  const { port } = await startTls(t, { streaming: { rateLimitBandwidth: MiB, chunkSize: 64 * 1024 } })
  const started = process.hrtime.bigint()
  const res = await get(port, '/stream/files/file.bin', { headers: { range: `bytes=0-${2 * MiB - 1}` } })
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  t.is(res.body.length, 2 * MiB)
  const measured = (2 * MiB - 64 * 1024) / seconds
  t.log(`measured ${(measured / MiB).toFixed(3)} MiB/s for a 1 MiB/s limit`)
  t.true(measured <= MiB * 1.03 && measured >= MiB / 3, `measured ${(measured / MiB).toFixed(3)} MiB/s`)
})

opensslTest('event streams and WebSockets (wss:) over TLS, with their limits', async (t) => {
  const { port, server } = await startTls(t, { streaming: { wsMaxMessageSize: 1024 } })
  // An event stream over https gets published events.
  const events = await new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, path: '/stream/events', servername: 'localhost', ca: certificates.main.cert, headers: { accept: 'text/event-stream' } }, (res) => {
      let text = ''
      res.on('data', (chunk) => {
        text += chunk
        if (text.includes('data: live')) {
          req.destroy()
          resolve(text)
        }
      })
    })
    req.on('error', reject)
    // Until the stream is subscribed and gets one.
    const publishing = setInterval(() => server.publish('news', 'live'), 100)
    req.on('close', () => clearInterval(publishing))
  })
  t.regex(events, /data: live/)
  // A WebSocket over wss: echoes, and an oversized message closes it with 1009.
  const socket = new WebSocketClient(`wss://localhost:${port}/stream/ws`, { ca: certificates.main.cert, lookup: toLoopback })
  await new Promise((resolve, reject) => {
    socket.on('open', resolve)
    socket.on('error', reject)
  })
  const echo = new Promise((resolve) => socket.once('message', (data) => resolve(String(data))))
  socket.send('over tls')
  t.is(await echo, 'over tls')
  const closed = new Promise((resolve) => socket.on('close', (code) => resolve(code)))
  socket.send('x'.repeat(2048))
  t.is(await closed, 1009)
  t.is(server.stats().rejections.ws_message_too_large, 1)
  await sleep(10)
})

needs(chromiumTool, opensslTest)('a browser holds 100 event streams to one origin over TLS (HTTP/2), each within the SSE caps', async (t) => {
  const app = new StreamingApp({ rateLimitRequests: 0, sseMaxConnectionsPerUser: 100 })
  app.sse('/events', { topics: ['news'] })
  const { server, reported, running } = await openInChromium(
    t,
    app,
    `const streams = 100
    const got = new Set()
    for (let i = 0; i < streams; i++) {
      const source = new EventSource('/events?stream=' + i)
      source.onmessage = () => {
        got.add(i)
        if (got.size === streams) {
          const protocol = performance.getEntriesByType('navigation')[0].nextHopProtocol
          // The 101st stream is over the per-user cap of 100: refused (429), not queued.
          fetch('/events?stream=extra').then((res) =>
            fetch('/report', { method: 'POST', body: JSON.stringify({ streams: got.size, protocol, extra: res.status }) }),
          )
        }
      }
    }`,
    // Room on the connection for the page, its fetches and the 100 streams.
    { server: { tls: certificates.main, http2MaxConcurrentStreams: 128 }, flags: ['--ignore-certificate-errors'] },
  )
  // Published until every stream has one (they subscribe as the page opens them).
  const publishing = setInterval(() => running() && server.publish('news', 'live'), 200)
  t.teardown(() => clearInterval(publishing))
  t.truthy(await eventually(reported, { timeout: 30_000 }), 'the page reported')
  t.deepEqual(reported(), { streams: 100, protocol: 'h2', extra: 429 })
  // The extra stream, and any stream the browser reopened while its old slot was still held.
  t.true(server.stats().rejections.sse_limit >= 1)
})
