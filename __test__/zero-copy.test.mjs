// Zero-copy file bodies (sendfile on HTTP/1.1, Linux): the same bytes as the read + write path
// for every kind of file response, every protection still exact, a truncated file ending the
// response cleanly, and HTTP/2 keeping the read + write path.
import test from 'ava'
import http from 'node:http'
import { randomBytes } from 'node:crypto'
import { truncateSync, readdirSync } from 'node:fs'
import { execFile } from 'node:child_process'
import { fixture, startFiles, request, connect, eventually, floodgate, Server, StreamingApp, needs, curlTool } from './helpers.mjs'

const MiB = 1024 * 1024
const linux = process.platform === 'linux'
// Where the core has sendfile; elsewhere `sendfile: true` falls back to read + write.
const zeroCopyHere = ['linux', 'android', 'darwin', 'freebsd'].includes(process.platform)
// Larger than the 2 MiB stand-in, and not a multiple of anything.
const BIG = randomBytes(5 * MiB + 12_345)
// Large enough that a client that stops reading cannot have it all in the socket buffers.
const LARGE = 48 * MiB
const dir = fixture({ 'big.bin': BIG, 'large.bin': Buffer.alloc(LARGE, 3), 'small.txt': 'hello\n' })
test.after.always(() => dir.cleanup())
const root = dir.root

/**
 * The server's `bytesSentZeroCopy` once it settles at `expected`: a client can have the last
 * bytes before the server thread that sent them has counted them.
 */
async function zeroCopied(server, expected) {
  await eventually(() => server.stats().bytesSentZeroCopy === expected, { timeout: 2000 })
  return server.stats().bytesSentZeroCopy
}

/** Reads a response on a raw socket until it closes: what arrived, and the declared length. */
function download(port, path, { rangeHeader = '', onData = () => {} } = {}) {
  return connect(port).then(
    (socket) =>
      new Promise((resolve) => {
        const chunks = []
        socket.on('data', (chunk) => {
          chunks.push(chunk)
          onData(Buffer.concat(chunks), socket)
        })
        socket.on('error', () => {})
        socket.on('close', () => {
          const all = Buffer.concat(chunks)
          const end = all.indexOf('\r\n\r\n')
          const head = all.subarray(0, end).toString('latin1')
          resolve({ head, body: all.subarray(end + 4), length: Number(/content-length: (\d+)/i.exec(head)?.[1]) })
        })
        socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n${rangeHeader}\r\n`)
      }),
  )
}

for (const sendfile of [true, false]) {
  const path = sendfile ? 'sendfile' : 'read + write'

  test(`${path}: whole files, ranges, multipart ranges, HEAD, 304 and pipelined requests carry the file's bytes`, async (t) => {
    const { base, port, server } = await startFiles(t, { root, server: { sendfile } })
    const whole = await request(`${base}/big.bin`)
    t.is(whole.status, 200)
    t.true(whole.body.equals(BIG))
    const range = await request(`${base}/big.bin`, { headers: { range: `bytes=${MiB - 3}-${4 * MiB + 6}` } })
    t.is(range.status, 206)
    t.true(range.body.equals(BIG.subarray(MiB - 3, 4 * MiB + 7)))
    const multi = await request(`${base}/big.bin`, { headers: { range: 'bytes=0-9,3000000-5242879,-5' } })
    t.is(multi.status, 206)
    const boundary = /boundary=(\S+)/.exec(multi.headers['content-type'])[1]
    const parts = multi.body.toString('latin1').split(`--${boundary}`).slice(1, -1)
    const bodies = parts.map((part) => Buffer.from(part.slice(part.indexOf('\r\n\r\n') + 4, -2), 'latin1'))
    t.deepEqual(
      bodies.map((b) => b.length),
      [10, 5242880 - 3000000, 5],
    )
    t.true(bodies[0].equals(BIG.subarray(0, 10)))
    t.true(bodies[1].equals(BIG.subarray(3000000, 5242880)))
    t.true(bodies[2].equals(BIG.subarray(BIG.length - 5)))
    const head = await request(`${base}/big.bin`, { method: 'HEAD' })
    t.is(head.headers['content-length'], String(BIG.length))
    t.is(head.body.length, 0)
    // Two requests in one write: hyper queues the second response behind the first.
    const socket = await connect(port)
    const received = []
    socket.on('data', (chunk) => received.push(chunk))
    const closed = new Promise((resolve) => socket.on('close', resolve))
    // A HEAD and a 304 before them on the same connection: responses whose body hyper never
    // takes must leave no file piece behind for the next one.
    const get = (path, extra = '') => `GET /stream/files/${path} HTTP/1.1\r\nHost: x\r\n${extra}\r\n`
    socket.write(
      `HEAD /stream/files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n` +
        get('big.bin', `If-None-Match: ${whole.headers.etag}\r\n`) +
        get('big.bin') +
        get('small.txt', 'Connection: close\r\n'),
    )
    await closed
    const all = Buffer.concat(received)
    const heads = all.toString('latin1').match(/^HTTP\/1\.1 \d+/gm)
    t.deepEqual(heads.slice(0, 3), ['HTTP/1.1 200', 'HTTP/1.1 304', 'HTTP/1.1 200'])
    const third = all.indexOf('HTTP/1.1 200', all.indexOf('HTTP/1.1 304'))
    const firstBody = all.indexOf('\r\n\r\n', third) + 4
    t.true(all.subarray(firstBody, firstBody + BIG.length).equals(BIG))
    t.regex(all.subarray(firstBody + BIG.length).toString(), /^HTTP\/1\.1 200 [^]*\r\n\r\nhello\n$/)
    // Everything but small.txt: bodies under 32 KiB are read and written (one write for both).
    const fileBytes = 2 * BIG.length + (4 * MiB + 10 - MiB) + 10 + (5242880 - 3000000) + 5
    const expected = sendfile && zeroCopyHere ? fileBytes : 0
    t.is(await zeroCopied(server, expected), expected)
  })

  test(`${path}: a FileResponse from a handler is sent the same way`, async (t) => {
    const server = new Server({ sendfile })
    const app = new StreamingApp({ rateLimitBandwidth: 0, rateLimitRequests: 0 })
    app.get('/report', () => new floodgate.FileResponse(`${root}/big.bin`, { filename: 'report.bin', attachment: true }))
    server.mount('/', app)
    const { url } = await server.listen({ port: 0, host: '127.0.0.1' })
    t.teardown(() => server.close({ drain: 0 }))
    const res = await request(`${url}/report`)
    t.is(res.headers['content-disposition'], 'attachment; filename="report.bin"')
    t.true(res.body.equals(BIG))
    t.is(await zeroCopied(server, sendfile && zeroCopyHere ? BIG.length : 0), sendfile && zeroCopyHere ? BIG.length : 0)
  })

  test(`${path}: a file truncated while it is sent ends the response and the connection, with only the file's bytes`, async (t) => {
    const file = fixture({ 'shrinking.bin': BIG })
    t.teardown(file.cleanup)
    // Shaped to 1 MiB/s, so the truncation lands mid-response.
    const { port, server } = await startFiles(t, { root: file.root, server: { sendfile }, streaming: { rateLimitBandwidth: MiB, chunkSize: 64 * 1024 } })
    let truncated = false
    const started = Date.now()
    const { head, body, length } = await download(port, '/stream/files/shrinking.bin', {
      onData: (all) => {
        if (!truncated && all.length > MiB / 2) {
          truncated = true
          truncateSync(`${file.root}/shrinking.bin`, 2 * MiB)
        }
      },
    })
    t.regex(head, /^HTTP\/1\.1 200 /)
    t.is(length, BIG.length)
    // Cut short at the new end of the file (or before it), never padded, never hung.
    t.true(body.length < length, `received ${body.length} of ${length}`)
    t.true(body.length <= 2 * MiB, `received ${body.length} bytes past the file's new end`)
    t.true(body.equals(BIG.subarray(0, body.length)), 'every byte received is the file content')
    t.true(Date.now() - started < 10_000)
    await eventually(() => server.stats().connectionsLive === 0)
    // The server goes on serving.
    t.is((await request(`http://127.0.0.1:${port}/stream/files/shrinking.bin`)).body.length, 2 * MiB)
  })

  test(`${path}: clients that disconnect mid-file free their connections and files`, async (t) => {
    const { port, server } = await startFiles(t, { root, server: { sendfile }, streaming: { rateLimitBandwidth: '512kb' } })
    const openFiles = () => readdirSync('/proc/self/fd').length
    const before = openFiles()
    const downloads = Array.from({ length: 20 }, () =>
      download(port, '/stream/files/big.bin', { onData: (all, socket) => all.length > 100_000 && socket.destroy() }),
    )
    const results = await Promise.all(downloads)
    t.true(results.every((r) => r.body.length < BIG.length))
    t.true(await eventually(() => server.stats().connectionsLive === 0, { timeout: 5000 }))
    if (linux) t.true(await eventually(() => openFiles() <= before, { timeout: 5000 }), `open files ${openFiles()}, before ${before}`)
  })

  test(`${path}: rateLimitBandwidth paces the file within +3 %`, async (t) => {
    const rate = MiB
    const chunk = 64 * 1024
    const { base, server } = await startFiles(t, { root, server: { sendfile }, streaming: { rateLimitBandwidth: rate, chunkSize: chunk } })
    const { bytes, seconds } = await new Promise((resolve, reject) => {
      const started = process.hrtime.bigint()
      http
        .get(`${base}/big.bin`, { headers: { range: `bytes=0-${2 * MiB - 1}` }, agent: false }, (res) => {
          let received = 0
          res.on('data', (data) => (received += data.length))
          res.on('end', () => resolve({ bytes: received, seconds: Number(process.hrtime.bigint() - started) / 1e9 }))
          res.on('error', reject)
        })
        .on('error', reject)
    })
    t.is(bytes, 2 * MiB)
    const measured = (bytes - chunk) / seconds
    t.log(`measured ${(measured / MiB).toFixed(3)} MiB/s for a 1 MiB/s limit`)
    t.true(measured <= rate * 1.03, `measured ${(measured / MiB).toFixed(3)} MiB/s`)
    t.true(measured >= rate / 3, `measured ${(measured / MiB).toFixed(3)} MiB/s`)
    t.is(await zeroCopied(server, sendfile && zeroCopyHere ? 2 * MiB : 0), sendfile && zeroCopyHere ? 2 * MiB : 0)
  })

  test(`${path}: a client that stops reading is cut at sendTimeout, an endless one at downloadTimeout`, async (t) => {
    const { port, server } = await startFiles(t, { root, server: { sendfile }, streaming: { sendTimeout: 1000 } })
    const stalled = await connect(port)
    stalled.pause() // never reads: the socket buffers fill, then the send waits
    stalled.on('error', () => {})
    const stalledClosed = new Promise((resolve) => stalled.on('close', resolve))
    stalled.write('GET /stream/files/large.bin HTTP/1.1\r\nHost: x\r\n\r\n')
    t.true(await eventually(() => server.stats().rejections.send_timeout === 1, { timeout: 8000 }))
    stalled.destroy()
    await stalledClosed

    // Reading, but too slowly for the whole-response deadline (sendTimeout never trips).
    const { port: slowPort, server: slowServer } = await startFiles(t, { root, server: { sendfile }, streaming: { sendTimeout: 30_000, downloadTimeout: 1500 } })
    const started = Date.now()
    const slow = await connect(slowPort)
    slow.on('error', () => {})
    const slowClosed = new Promise((resolve) => slow.on('close', resolve))
    slow.on('data', () => {
      slow.pause()
      setTimeout(() => slow.resume(), 200)
    })
    slow.write('GET /stream/files/large.bin HTTP/1.1\r\nHost: x\r\n\r\n')
    // Seen from the server: the client reads what its buffers still hold long after the cut.
    t.true(await eventually(() => slowServer.stats().rejections.download_timeout === 1, { timeout: 8000 }))
    const cutAfter = Date.now() - started
    t.true(cutAfter >= 1400 && cutAfter < 6000, `cut after ${cutAfter} ms`)
    t.true(await eventually(() => slowServer.stats().connectionsLive === 0, { timeout: 3000 }))
    slow.destroy()
    await slowClosed
    t.is(slowServer.stats().rejections.send_timeout ?? 0, 0)
  })
}

test('sendfile must be a boolean', (t) => {
  const error = t.throws(() => new Server({ sendfile: 'yes' }), { instanceOf: TypeError })
  t.regex(error.message, /sendfile/)
})

needs(
  curlTool,
  test,
)('HTTP/2 keeps the read + write path: the same bytes, none sent by sendfile', async (t) => {
  const { url, server } = await startFiles(t, { root, server: { http2: true } })
  const body = await new Promise((resolve, reject) =>
    execFile(curlTool.path, ['-s', '--http2-prior-knowledge', `${url}/stream/files/big.bin`], { encoding: 'buffer', maxBuffer: 64 * MiB }, (err, stdout) =>
      err ? reject(err) : resolve(stdout),
    ),
  )
  t.true(body.equals(BIG))
  t.is(server.stats().bytesSentZeroCopy, 0)
  // The same server over HTTP/1.1 does use it.
  t.true((await request(`${url}/stream/files/big.bin`)).body.equals(BIG))
  t.is(await zeroCopied(server, zeroCopyHere ? BIG.length : 0), zeroCopyHere ? BIG.length : 0)
})
