// HTTP/2: off unless asked for, and every limit per connection and per stream as over HTTP/1.1.
// Real HTTP/2 clients: curl, nghttp2's h2load, and a Python `h2` client that misbehaves on
// purpose (__test__/tools/h2_client.py: windows kept shut, trickled, silent connections).
import test from 'ava'
import { execFile } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Server, StreamingApp, fixture, needs, curlTool, h2loadTool, pythonWith, runPythonTool, rawExchange } from './helpers.mjs'

const pythonH2 = pythonWith('h2', 'python3-h2')

function run(tool, args, { timeout = 60_000 } = {}) {
  return new Promise((resolve) => {
    execFile(tool.path, args, { timeout }, (error, stdout, stderr) => resolve({ code: error?.code ?? 0, stdout, stderr }))
  })
}

async function start(t, { server = {}, streaming = {} } = {}) {
  const { root } = fixture({ 'small.txt': 'hello' })
  writeFileSync(join(root, 'half.bin'), Buffer.alloc(512 * 1024, 7))
  writeFileSync(join(root, 'big.bin'), Buffer.alloc(8 * 1024 * 1024, 7))
  const instance = new Server(server)
  const app = new StreamingApp({ rateLimitRequests: 0, ...streaming })
  app.files('/files', { root })
  app.post('/echo', async (req) => String((await req.arrayBuffer()).byteLength))
  instance.mount('/stream', app)
  instance.mount('/api', () => 'hi')
  const { port, url } = await instance.listen({ port: 0 })
  t.teardown(() => instance.close({ drain: 0 }))
  return { server: instance, port, url }
}

needs(curlTool, test)('http2: false (the default) serves no cleartext HTTP/2; HTTP/1.1 is unchanged', async (t) => {
  const { url } = await start(t)
  const h2 = await run(curlTool, ['-s', '-o', '/dev/null', '-w', '%{http_code} %{http_version}', '--http2-prior-knowledge', `${url}/api/x`])
  t.not(h2.stdout, '200 2', 'no response over HTTP/2')
  const h1 = await run(curlTool, ['-s', '-o', '/dev/null', '-w', '%{http_code} %{http_version}', `${url}/api/x`])
  t.is(h1.stdout, '200 1.1')
})

needs(h2loadTool, test)('http2: false: h2load gets no HTTP/2 stream answered', async (t) => {
  const { url } = await start(t)
  const { stdout } = await run(h2loadTool, ['-n', '4', '-c', '1', '-m', '4', `${url}/api/x`])
  t.regex(stdout, /0 succeeded/)
})

needs(curlTool, test)('http2: true serves h2c with prior knowledge', async (t) => {
  const { url } = await start(t, { server: { http2: true } })
  const h2 = await run(curlTool, ['-s', '-o', '/dev/null', '-w', '%{http_code} %{http_version}', '--http2-prior-knowledge', `${url}/api/x`])
  t.is(h2.stdout, '200 2')
})

needs(h2loadTool, test)('over HTTP/2, rateLimitBandwidth holds per connection, not per stream', async (t) => {
  const { url } = await start(t, { server: { http2: true }, streaming: { rateLimitBandwidth: '1mb' } })
  const started = Date.now()
  // Four streams of 512 KiB on one connection: 2 MiB at 1 MiB/s is about 2 s (per stream it
  // would be 0.5 s).
  const { stdout } = await run(h2loadTool, ['-n', '4', '-c', '1', '-m', '4', `${url}/stream/files/half.bin`])
  const elapsed = (Date.now() - started) / 1000
  t.regex(stdout, /4 succeeded/)
  t.true(elapsed >= 1.5, `${elapsed} s`)
})

needs(h2loadTool, test)('over HTTP/2, perClientBandwidth holds across one client’s connections and streams', async (t) => {
  const { url } = await start(t, { server: { http2: true }, streaming: { rateLimitBandwidth: 0, perClientBandwidth: '1mb' } })
  const started = Date.now()
  const { stdout } = await run(h2loadTool, ['-n', '4', '-c', '2', '-m', '2', `${url}/stream/files/half.bin`])
  const elapsed = (Date.now() - started) / 1000
  t.regex(stdout, /4 succeeded/)
  t.true(elapsed >= 1.5, `${elapsed} s`)
})

needs(h2loadTool, test)('over HTTP/2, rateLimitRequests counts every stream: 429 past the limit on one connection', async (t) => {
  const { server, url } = await start(t, { server: { http2: true }, streaming: { rateLimitRequests: 5, rateLimitWindow: '1m' } })
  const { stdout } = await run(h2loadTool, ['-n', '20', '-c', '1', '-m', '1', `${url}/stream/files/small.txt`])
  t.regex(stdout, /status codes: 5 2xx, 0 3xx, 15 4xx/)
  t.is(server.stats().rejections.rate_limited, 15)
})

needs(h2loadTool, test)('over HTTP/2, maxUploadSize refuses a body over the cap with 413', async (t) => {
  const { server, url } = await start(t, { server: { http2: true }, streaming: { maxUploadSize: '1kb' } })
  const { root: dir } = fixture({})
  const body = join(dir, 'body.bin')
  writeFileSync(body, Buffer.alloc(64 * 1024, 1))
  const { stdout } = await run(h2loadTool, ['-n', '2', '-c', '1', '-d', body, `${url}/stream/echo`])
  t.regex(stdout, /status codes: 0 2xx, 0 3xx, 2 4xx/)
  t.is(server.stats().rejections.body_too_large, 2)
})

needs(pythonH2, test)('over HTTP/2, streams whose window the client keeps shut are reset at sendTimeout', async (t) => {
  const { server, port } = await start(t, {
    server: { http2: true },
    streaming: { rateLimitBandwidth: 0, sendTimeout: '2s', downloadTimeout: '2m' },
  })
  const result = await runPythonTool(pythonH2, 'h2_client.py', ['stall', port, '/stream/files/big.bin', 20, 30])
  // Every stream reset (RST_STREAM, CANCEL) within sendTimeout plus a margin; the connection
  // itself stays up.
  t.is(result.reset, 20)
  t.true(result.elapsed >= 1.9 && result.elapsed < 10, `${result.elapsed} s`)
  t.is(result.goaway, null)
  t.is(server.stats().rejections.send_timeout, 20)
})

needs(pythonH2, test)('over HTTP/2, a stream trickled open is cut off at downloadTimeout', async (t) => {
  const { server, port } = await start(t, {
    server: { http2: true },
    streaming: { rateLimitBandwidth: 0, sendTimeout: '30s', downloadTimeout: '2s' },
  })
  const result = await runPythonTool(pythonH2, 'h2_client.py', ['trickle', port, '/stream/files/big.bin', 3, 30])
  t.is(result.reset, 3)
  t.true(result.bytes > 0, 'the trickle got data')
  t.true(result.elapsed >= 1.9 && result.elapsed < 10, `${result.elapsed} s`)
  t.is(server.stats().rejections.download_timeout, 3)
})

needs(pythonH2, test)('over HTTP/2, a connection that never opens a stream gets GOAWAY at headerTimeout', async (t) => {
  const { server, port } = await start(t, { server: { http2: true, headerTimeout: '1s' } })
  const result = await runPythonTool(pythonH2, 'h2_client.py', ['silent', port, '/', 1, 15])
  // A GOAWAY frame the client parsed (no HTTP/1.1 408 text inside the HTTP/2 stream), then close.
  t.true(result.goaway >= 0.9 && result.goaway < 5, `GOAWAY at ${result.goaway} s`)
  t.truthy(result.closed)
  t.is(server.stats().rejections.header_timeout, 1)
})

needs(pythonH2, test)('over HTTP/2, a connection with no open stream for keepAliveTimeout gets GOAWAY', async (t) => {
  const { server, port } = await start(t, { server: { http2: true, keepAliveTimeout: '1s' } })
  const result = await runPythonTool(pythonH2, 'h2_client.py', ['idle', port, '/stream/files/small.txt', 1, 15])
  t.is(result.ended, 1)
  const idle = result.goaway - result.ended_at
  t.true(idle >= 0.9 && idle < 5, `GOAWAY ${idle} s after the response`)
  t.is(server.stats().rejections.header_timeout, 0, 'an idle connection is not a refusal')
})

test('more than 100 header fields get the 431 the socket wrapper counts (not hyper’s uncounted one)', async (t) => {
  const { server, port } = await start(t)
  const fields = Array.from({ length: 101 }, (_, i) => `x-h${i}: 1\r\n`).join('')
  const answer = await rawExchange(port, `GET /api/x HTTP/1.1\r\nHost: x\r\n${fields}\r\n`)
  t.regex(answer, /^HTTP\/1\.1 431/)
  t.is(server.stats().rejections.header_too_large, 1)
  // 100 fields (with Host and Connection) pass.
  const ok = Array.from({ length: 98 }, (_, i) => `x-h${i}: 1\r\n`).join('')
  t.regex(await rawExchange(port, `GET /api/x HTTP/1.1\r\nHost: x\r\n${ok}Connection: close\r\n\r\n`), /^HTTP\/1\.1 200/)
})
