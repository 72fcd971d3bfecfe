// PROXY protocol v1 and v2 behind a trusted load balancer: the carried address is the client's
// (handlers, per-address caps), headers from elsewhere, malformed, missing or late are closed
// and counted, and it works in front of TLS.
import test from 'ava'
import net from 'node:net'
import tls from 'node:tls'
import { Server, StreamingApp, eventually, needs, opensslTool, selfSignedCertificate } from './helpers.mjs'

/** A server whose JS route answers the client address it sees. */
async function start(t, serverOptions = {}) {
  const server = new Server({ proxyProtocol: { trusted: ['127.0.0.1/32', '127.0.0.2'] }, headerTimeout: 1000, ...serverOptions })
  const app = new StreamingApp({ rateLimitRequests: 0 })
  app.get('/who', (req, ctx) => new Response(ctx.client))
  server.mount('/', app)
  const { port } = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  return { server, port }
}

const v1 = (client, port = 51000) => `PROXY ${client.includes(':') ? 'TCP6' : 'TCP4'} ${client} ${client.includes(':') ? '::1' : '127.0.0.1'} ${port} 80\r\n`

/** A v2 PROXY header (TCP over IPv4) for `client`, or the LOCAL command of a health check. */
function v2(client, { local = false } = {}) {
  const signature = Buffer.from('\r\n\r\n\0\r\nQUIT\n', 'latin1')
  if (local) return Buffer.concat([signature, Buffer.from([0x20, 0x00, 0x00, 0x00])])
  const addresses = Buffer.from([...client.split('.').map(Number), 127, 0, 0, 1, 0xc7, 0x38, 0x00, 0x50])
  return Buffer.concat([signature, Buffer.from([0x21, 0x11, 0x00, addresses.length]), addresses])
}

/** Writes `prefix` then a GET on one socket; resolves everything received until close. */
function exchange(port, prefix, { localAddress = '127.0.0.1', path = '/who' } = {}) {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress })
    const chunks = []
    socket.on('data', (chunk) => chunks.push(chunk))
    socket.on('error', () => {})
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')))
    socket.on('connect', () => {
      socket.write(prefix)
      socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)
    })
  })
}

const body = (response) => response.slice(response.indexOf('\r\n\r\n') + 4)

test('v1 and v2 headers from a trusted balancer name the client', async (t) => {
  const { port } = await start(t)
  t.is(body(await exchange(port, v1('203.0.113.7'))), '203.0.113.7')
  t.is(body(await exchange(port, v1('2001:db8::7'))), '2001:db8::7')
  t.is(body(await exchange(port, v2('198.51.100.9'))), '198.51.100.9')
  // A health check (v2 LOCAL, v1 UNKNOWN) is the balancer's own connection.
  t.is(body(await exchange(port, v2('', { local: true }))), '127.0.0.1')
  t.is(body(await exchange(port, 'PROXY UNKNOWN\r\n', { localAddress: '127.0.0.2' })), '127.0.0.2')
})

test('the per-address cap counts the carried address, not the balancer', async (t) => {
  const { port, server } = await start(t, { maxConnectionsPerIp: 2 })
  const held = []
  for (let i = 0; i < 2; i++) {
    const socket = net.connect({ port, host: '127.0.0.1' })
    socket.on('error', () => {})
    socket.write(v1('203.0.113.20'))
    held.push(socket)
  }
  t.teardown(() => held.forEach((socket) => socket.destroy()))
  await eventually(() => server.stats().connectionsLive === 2)
  t.regex(await exchange(port, v1('203.0.113.20')), /^HTTP\/1\.1 429 /)
  t.is(server.stats().rejections.connection_limit, 1)
  // Another client through the same balancer is served.
  t.is(body(await exchange(port, v1('203.0.113.21'))), '203.0.113.21')
})

test('untrusted sources, missing, malformed and late headers are closed and counted', async (t) => {
  const { port, server } = await start(t)
  t.is(await exchange(port, v1('203.0.113.7'), { localAddress: '127.0.0.3' }), '')
  t.is(server.stats().rejections.proxy_protocol_untrusted, 1)
  t.is(await exchange(port, ''), '', 'no header: the request itself is refused')
  t.true(await eventually(() => server.stats().rejections.proxy_protocol_invalid === 1))
  t.is(await exchange(port, 'PROXY TCP4 not addresses 1 2\r\n'), '')
  t.true(await eventually(() => server.stats().rejections.proxy_protocol_invalid === 2))
  // Half a header, then silence: closed at headerTimeout.
  const started = Date.now()
  const late = await new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1' }, () => socket.write('PROXY TCP4 203.0.'))
    socket.on('error', () => {})
    socket.on('data', () => {})
    socket.on('close', () => resolve(Date.now() - started))
  })
  t.true(late >= 900 && late < 4000, `closed after ${late} ms`)
  t.true(await eventually(() => server.stats().rejections.header_timeout === 1))
  t.true(await eventually(() => server.stats().connectionsLive === 0))
  t.is(body(await exchange(port, v1('203.0.113.7'))), '203.0.113.7', 'good connections pass beside them')
})

test('proxyProtocol options are checked', (t) => {
  t.throws(() => new Server({ proxyProtocol: { trusted: [] } }), { instanceOf: TypeError, message: /proxyProtocol\.trusted/ })
  t.throws(() => new Server({ proxyProtocol: { trusted: ['not an address'] } }), { instanceOf: TypeError, message: /proxyProtocol\.trusted/ })
  t.throws(() => new Server({ proxyProtocol: { trusted: ['10.0.0.0/8'], v3: true } }), { instanceOf: TypeError, message: /proxyProtocol/ })
})

needs(opensslTool, test)('in front of TLS: the header, then the handshake', async (t) => {
  const certificate = selfSignedCertificate(['localhost'])
  const { port, server } = await start(t, { tls: certificate })
  const received = await new Promise((resolve, reject) => {
    const raw = net.connect({ port, host: '127.0.0.1' }, () => {
      raw.write(v2('192.0.2.44'))
      const secure = tls.connect({ socket: raw, servername: 'localhost', ca: certificate.cert }, () => {
        secure.write('GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
      })
      const chunks = []
      secure.on('data', (chunk) => chunks.push(chunk))
      secure.on('end', () => resolve(Buffer.concat(chunks).toString()))
      secure.on('error', reject)
    })
  })
  t.is(body(received), '192.0.2.44')
  t.is(server.stats().rejections.proxy_protocol_invalid, 0)
})
