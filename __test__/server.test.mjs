// Server lifecycle, options validation, HTTP/2 cleartext, stats, and the CLI.
import test from 'ava'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { Server, StreamingApp, fixture, startFiles, request, connect, untilClosed, curl, eventually, needs, curlTool } from './helpers.mjs'

const MiB = 1024 * 1024
const dir = fixture({ 'small.txt': 'hello\n', 'two.bin': Buffer.alloc(2 * MiB, 3) })
test.after.always(() => dir.cleanup())
const root = dir.root
const packageRoot = fileURLToPath(new URL('..', import.meta.url))

test('wrong options throw a TypeError naming the option, at construction', (t) => {
  const cases = [
    [() => new Server({ maxConections: 1 }), /maxConections/],
    [() => new Server({ headerTimeout: '10 parsecs' }), /headerTimeout/],
    [() => new Server({ maxHeaderSize: -1 }), /maxHeaderSize/],
    [() => new Server({ trustProxy: ['not-an-ip'] }), /trustProxy/],
    [() => new Server(5), /options must be an object/],
    [() => new StreamingApp({ chunkSize: '1b' }), /chunkSize/],
    [() => new StreamingApp({ rateLimitBandwidth: 'fast' }), /rateLimitBandwidth/],
    [() => new StreamingApp({ sendTimeout: 1.5 }), /sendTimeout/],
    [() => new StreamingApp().files('/f', { root: '/definitely/not/here' }), /root/],
    [() => new StreamingApp().files('/f', { root, disposition: 'sideways' }), /disposition/],
    [() => new StreamingApp().files('f', { root }), /prefix/],
    [() => new Server().mount('/x', {}), /handler must be a function or an object with a fetch method/],
  ]
  for (const [make, message] of cases) {
    const error = t.throws(make, { instanceOf: TypeError })
    t.regex(error.message, message)
  }
})

test('strings and numbers are both accepted for sizes and durations', (t) => {
  t.notThrows(() => new Server({ headerTimeout: '30s', keepAliveTimeout: 5000, maxHeaderSize: '32kb' }))
  t.notThrows(() => new StreamingApp({ chunkSize: '128kb', rateLimitBandwidth: '10mb', downloadTimeout: '5m' }))
})

test('listen on port 0 reports the bound address; stats count traffic', async (t) => {
  const { server, port, url, base } = await startFiles(t, { root })
  t.true(port > 0)
  t.is(url, `http://127.0.0.1:${port}`)
  t.deepEqual(server.address(), { port, address: '127.0.0.1', url })
  await request(`${base}/small.txt`)
  const stats = server.stats()
  t.true(stats.connectionsTotal >= 1)
  t.is(stats.requestsTotal, 1)
  t.true(stats.bytesSent > 6)
  t.true(stats.bytesReceived > 20)
  t.is(typeof stats.rejections.header_timeout, 'number')
})

test('metrics(): the counters as Prometheus text, rejections labelled by reason', async (t) => {
  const { server, base } = await startFiles(t, { root })
  await request(`${base}/small.txt`)
  await request(`${base}/missing.txt`)
  const text = server.metrics()
  t.regex(text, /^# HELP floodgate_connections /m)
  t.regex(text, /^floodgate_requests_total 2$/m)
  t.regex(text, /^floodgate_rejections_total\{reason="not_found"\} 1$/m)
  for (const line of text.trim().split('\n')) {
    t.regex(line, /^(# (HELP|TYPE) floodgate_\w+ .+|floodgate_\w+(\{(le|reason|app)="[^"]+"(,(reason|app)="[^"]+")*\})? [\d.e+-]+)$/, line)
  }
})

test('close() twice is harmless; the port is free afterwards', async (t) => {
  const server = new Server()
  const { port } = await server.listen({ port: 0 })
  await Promise.all([server.close(), server.close()])
  await server.close()
  const again = new Server()
  await again.listen({ port })
  await again.close()
  t.pass()
})

test('close({ drain }) lets an in-flight download finish', async (t) => {
  const server = new Server()
  const app = new StreamingApp({ rateLimitBandwidth: 2 * MiB })
  app.files('/files', { root })
  server.mount('/stream', app)
  const { url } = await server.listen({ port: 0 })
  const download = request(`${url}/stream/files/two.bin`)
  await eventually(() => server.stats().bytesSent > 100_000)
  const closed = server.close({ drain: 5000 })
  const res = await download
  t.is(res.status, 200)
  t.is(res.body.length, 2 * MiB)
  await closed
  await t.throwsAsync(() => request(`${url}/stream/files/small.txt`), { message: /ECONNREFUSED/ })
})

test('close({ drain }) aborts what is still running at the deadline', async (t) => {
  const server = new Server()
  const app = new StreamingApp({ rateLimitBandwidth: '256kb' })
  app.files('/files', { root })
  server.mount('/stream', app)
  const { url } = await server.listen({ port: 0 })
  const download = request(`${url}/stream/files/two.bin`).then(
    (res) => res.body.length,
    () => 'aborted',
  )
  await eventually(() => server.stats().bytesSent > 100_000)
  const started = Date.now()
  await server.close({ drain: 300 })
  t.true(Date.now() - started < 2000)
  t.is(await download, 'aborted')
})

test('close() ends idle keep-alive connections', async (t) => {
  const { server, port } = await startFiles(t, { root, server: { keepAliveTimeout: 60_000 } })
  const socket = await connect(port)
  const closed = untilClosed(socket)
  socket.write('GET /stream/files/small.txt HTTP/1.1\r\nHost: x\r\n\r\n')
  await eventually(() => server.stats().requestsTotal === 1)
  await server.close({ drain: 5000 })
  const { text } = await closed
  t.regex(text, /^HTTP\/1\.1 200 /)
})

function runNode(args, { timeout = 20_000, cwd = packageRoot, onStdout } = {}) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    const timer = setTimeout(() => child.kill('SIGKILL'), timeout)
    child.on('error', (error) => {
      clearTimeout(timer)
      resolve({ code: null, signal: null, stdout, stderr: `${stderr}spawn failed: ${error.message}` })
    })
    child.stdout.on('data', (chunk) => {
      stdout += chunk
      onStdout?.(stdout, child)
    })
    child.stderr.on('data', (chunk) => (stderr += chunk))
    // 'close', not 'exit': 'exit' can come before the last of stderr has been read.
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr })
    })
  })
}

test('the process exits by itself after close (no handle keeps it alive)', async (t) => {
  const script = `
    const { Server, StreamingApp } = require('./index.js')
    const server = new Server()
    const app = new StreamingApp()
    app.files('/files', { root: ${JSON.stringify(root)} })
    server.mount('/stream', app)
    server.listen({ port: 0 }).then(async ({ url }) => {
      const res = await fetch(url + '/stream/files/small.txt')
      console.log(res.status, await res.text())
      await server.close({ drain: 1000 })
      console.log('closed')
    })`
  const started = Date.now()
  const result = await runNode(['-e', script])
  t.is(result.code, 0, result.stderr)
  t.is(result.stdout, '200 hello\n\nclosed\n')
  t.true(Date.now() - started < 10_000)
})

test('a listening server keeps the process alive', async (t) => {
  const script = `
    const { Server } = require('./index.js')
    new Server().listen({ port: 0 }).then(() => console.log('listening'))`
  // Killed 1 s after it printed 'listening' rather than at a fixed time from spawn: a start slowed
  // by a loaded machine must not read as an exit.
  let killing = false
  const onStdout = (out, child) => {
    if (killing || !out.includes('listening')) return
    killing = true
    setTimeout(() => child.kill('SIGKILL'), 1000)
  }
  const result = await runNode(['-e', script], { onStdout })
  t.is(result.signal, 'SIGKILL', 'still running when killed')
  t.is(result.stdout, 'listening\n')
})

needs(curlTool, test)('h2c: HTTP/2 with prior knowledge when http2 is on', async (t) => {
  const { base } = await startFiles(t, { root, server: { http2: true } })
  const res = await curl(['-s', '--http2-prior-knowledge', '-w', '\n%{http_version} %{http_code}', `${base}/small.txt`])
  t.is(res.stdout.toString(), 'hello\n\n2 200')
  const ranged = await curl(['-s', '--http2-prior-knowledge', '-r', '0-1', '-w', ' %{http_code}', `${base}/small.txt`])
  t.is(ranged.stdout.toString(), 'he 206')
  const http1 = await request(`${base}/small.txt`)
  t.is(http1.status, 200, 'HTTP/1.1 still served beside h2c')
})

test('h2c: half a preface is closed at headerTimeout', async (t) => {
  const { port, server } = await startFiles(t, { root, server: { http2: true, headerTimeout: 500 } })
  const started = Date.now() // before connecting: the server's clock may start at accept, before connect resolves here
  const socket = await connect(port)
  const closed = untilClosed(socket)
  socket.write('PRI * HTTP/2.0\r\n\r\nSM')
  const { at } = await closed
  // Up to 10x the 500 ms timeout for a loaded machine; still half the 10 s default it would fall back to.
  t.true(at - started >= 400 && at - started < 5000, `closed after ${at - started} ms`)
  t.is(server.stats().rejections.header_timeout, 1)
})

test('CLI: serve <dir> prints the URL and serves the folder', async (t) => {
  let url
  const uploads = fixture()
  t.teardown(uploads.cleanup)
  const args = ['cli.js', 'serve', root, '--port', '0', '--max-connections-per-ip', '5', '--upload-dir', uploads.root, '--max-upload-size', '1kb']
  const result = await runNode(args, {
    onStdout: async (stdout, child) => {
      const match = /at (http:\/\/\S+)\//.exec(stdout)
      if (match && !url) {
        url = match[1]
        const res = await request(`${url}/small.txt`)
        t.is(res.status, 200)
        t.is(res.body.toString(), 'hello\n')
        const stored = await fetch(`${url}/upload/note.txt`, { method: 'PUT', body: 'note' })
        t.is(stored.status, 201)
        const tooBig = await fetch(`${url}/upload/big.txt`, { method: 'PUT', body: 'x'.repeat(2048) })
        t.is(tooBig.status, 413)
        child.kill('SIGTERM')
      }
    },
  })
  t.truthy(url)
  t.is(result.code, 0, `signal ${result.signal}, stderr: ${result.stderr}`)
})

test('CLI: a bad flag or a missing folder is a one-line error and a non-zero exit', async (t) => {
  const badFlag = await runNode(['cli.js', 'serve', root, '--prot', '1'])
  t.not(badFlag.code, 0)
  t.regex(badFlag.stderr, /^floodgate: .*--prot/)
  const missing = await runNode(['cli.js', 'serve', '/no/such/folder'])
  t.not(missing.code, 0)
  t.is(missing.stderr, 'floodgate: /no/such/folder: no such folder\n')
  const badSize = await runNode(['cli.js', 'serve', root, '--rate-limit-bandwidth', 'lots'])
  t.not(badSize.code, 0)
  t.regex(badSize.stderr, /rateLimitBandwidth/)
})
