// HTTP/1.1 message rules (RFC 9112) an attack run found unenforced: Host, Transfer-Encoding,
// Content-Length with Transfer-Encoding. Each refusal is tripped over a raw socket (status,
// `Connection: close`, the socket closed after), and the requests beside it still pass.
import test from 'ava'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Server, StreamingApp, fixture, rawExchange } from './helpers.mjs'

async function start(t) {
  const dir = fixture()
  t.teardown(dir.cleanup)
  const server = new Server()
  const app = new StreamingApp({ rateLimitRequests: 0, rateLimitBandwidth: 0 })
  app.get('/hello', () => new Response('hello'))
  app.post('/echo', async (req) => new Response(await req.text()))
  app.uploads('/up', { dir: dir.root })
  server.mount('/', app)
  const { port } = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  return { server, port, root: dir.root }
}

// Resolves once the server closed the socket; a server that keeps it open fails at 5 s.
const exchange = (port, payload) => rawExchange(port, payload, { timeout: 5_000 })
const statusOf = (text) => Number(/^HTTP\/1\.[01] (\d{3}) /.exec(text)?.[1])

function refused(t, text, status) {
  t.is(statusOf(text), status, text.slice(0, 200))
  t.regex(text, /\r\nconnection: close\r\n/i)
}

test('HTTP/1.1 without Host, with two Host lines, or an invalid Host → 400, closed, bad_request', async (t) => {
  const { server, port } = await start(t)
  refused(t, await exchange(port, 'GET /hello HTTP/1.1\r\n\r\n'), 400)
  refused(t, await exchange(port, 'GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n'), 400)
  refused(t, await exchange(port, 'GET /hello HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n'), 400)
  refused(t, await exchange(port, 'GET /hello HTTP/1.1\r\nHost: a/b\r\n\r\n'), 400)
  refused(t, await exchange(port, 'GET /hello HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n'), 400)
  t.is(server.stats().rejections.bad_request, 5)
})

test('Host rules let ordinary requests through: HTTP/1.0 without Host, Host with a port, keep-alive', async (t) => {
  const { server, port } = await start(t)
  const old = await exchange(port, 'GET /hello HTTP/1.0\r\n\r\n')
  t.is(statusOf(old), 200)
  t.regex(old, /hello$/)
  const two = await exchange(
    port,
    'GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\nGET /hello HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n',
  )
  t.is(two.match(/HTTP\/1\.1 200 /g)?.length, 2, two)
  t.is(server.stats().rejections.bad_request, 0)
})

test('Transfer-Encoding other than chunked alone → 501, closed; chunked alone passes', async (t) => {
  const { server, port } = await start(t)
  const body = '5\r\nhello\r\n0\r\n\r\n'
  refused(t, await exchange(port, `POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n${body}`), 501)
  refused(t, await exchange(port, `POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n${body}`), 501)
  refused(t, await exchange(port, `POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n${body}`), 501)
  t.is(server.stats().rejections.bad_request, 3)
  const ok = await exchange(port, `POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n${body}`)
  t.is(statusOf(ok), 200)
  t.regex(ok, /hello$/)
  t.is(server.stats().rejections.bad_request, 3)
})

test('Content-Length with Transfer-Encoding → 400, closed, nothing stored; either alone stores the upload', async (t) => {
  const { server, port, root } = await start(t)
  const chunked = '5\r\nhello\r\n0\r\n\r\n'
  refused(t, await exchange(port, `PUT /up/a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n${chunked}`), 400)
  refused(t, await exchange(port, `PUT /up/b.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 15\r\n\r\n${chunked}`), 400)
  refused(t, await exchange(port, `POST /echo HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n${chunked}`), 400)
  t.is(server.stats().rejections.bad_request, 3)
  t.false(existsSync(join(root, 'a.txt')))
  t.false(existsSync(join(root, 'b.txt')))
  t.deepEqual(readdirSync(root), [])

  const byLength = await exchange(port, 'PUT /up/c.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello')
  t.is(statusOf(byLength), 201)
  const byChunks = await exchange(port, `PUT /up/d.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${chunked}`)
  t.is(statusOf(byChunks), 201)
  t.is(readFileSync(join(root, 'c.txt'), 'utf8'), 'hello')
  t.is(readFileSync(join(root, 'd.txt'), 'utf8'), 'hello')
  t.is(server.stats().rejections.bad_request, 3)
})

test('pipelined requests whose next head is cut between CR and LF by the network are served, not taken for a bare LF', async (t) => {
  const { server, port } = await start(t)
  const net = await import('node:net')
  const text = await new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1' })
    const chunks = []
    socket.on('data', (chunk) => chunks.push(chunk))
    socket.on('error', () => {})
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')))
    socket.on('connect', () => {
      // The first request and the start of the second, up to a CR; the LF comes later, in a
      // read of its own once the first response is out.
      socket.write('GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r')
      setTimeout(() => socket.write('\nConnection: close\r\n\r\n'), 200)
    })
  })
  t.is(text.split('HTTP/1.1 200').length - 1, 2, text.slice(0, 300))
  t.is(server.stats().rejections.bad_request, 0)
})
