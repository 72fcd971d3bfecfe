// Uploads: atomic, bounded, timed request bodies; and the per-client request-rate limit.
import test from 'ava'
import { createHash } from 'node:crypto'
import { readdirSync, readFileSync, existsSync, mkdirSync, writeFileSync, utimesSync } from 'node:fs'
import { join } from 'node:path'
import http from 'node:http'
import { Server, StreamingApp, fixture, connect, untilClosed, sleep, eventually, request, serverProcess, uploadsProcess, rssGrowthDuring } from './helpers.mjs'

const MiB = 1024 * 1024

/** A server with uploads at /stream/up and files at /stream/files over the same folder. */
async function start(t, { streaming = {}, uploads = {} } = {}) {
  const dir = fixture()
  mkdirSync(join(dir.root, 'sub'))
  t.teardown(dir.cleanup)
  const server = new Server({ maxConnectionsPerIp: 0 })
  const app = new StreamingApp({ rateLimitRequests: 0, maxUploadSize: MiB, ...streaming })
  app.uploads('/up', { dir: dir.root, ...uploads })
  app.files('/files', { root: dir.root })
  server.mount('/stream', app)
  const { url, port } = await server.listen({ port: 0 })
  t.teardown(() => server.close({ drain: 0 }))
  return { server, url, port, root: dir.root }
}

const leftovers = (root) =>
  [...readdirSync(root), ...readdirSync(join(root, 'sub')).map((name) => `sub/${name}`)].filter((name) => name.includes('.upload'))

/** Uploads `body` (Buffer or async iterable) with Node's http; resolves { status, json, text }. */
function upload(url, body, { method = 'PUT', headers = {}, localAddress } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, localAddress, agent: false }, (res) => {
      const chunks = []
      res.on('data', (chunk) => chunks.push(chunk))
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString()
        let json
        try {
          json = JSON.parse(text)
        } catch {}
        resolve({ status: res.statusCode, headers: res.headers, text, json })
      })
    })
    req.on('error', reject)
    if (Buffer.isBuffer(body)) {
      req.end(body)
    } else {
      ;(async () => {
        for await (const chunk of body) {
          if (!req.write(chunk)) await new Promise((r) => req.once('drain', r))
        }
        req.end()
      })().catch(reject)
    }
  })
}

const sha256 = (buffer) => createHash('sha256').update(buffer).digest('hex')

test('PUT and POST store the body atomically and answer 201 { name, size, sha256 }', async (t) => {
  const { url, root } = await start(t)
  const body = Buffer.from('hello upload\n'.repeat(1000))
  const put = await upload(`${url}/stream/up/a.txt`, body)
  t.is(put.status, 201)
  t.deepEqual(put.json, { name: 'a.txt', size: body.length, sha256: sha256(body) })
  t.deepEqual(readFileSync(join(root, 'a.txt')), body)
  const post = await upload(`${url}/stream/up/sub/b.bin`, Buffer.from([1, 2, 3]), { method: 'POST' })
  t.is(post.status, 201)
  t.is(post.json.name, 'sub/b.bin')
  const served = await request(`${url}/stream/files/sub/b.bin`)
  t.deepEqual(served.body, Buffer.from([1, 2, 3]))
  t.deepEqual(leftovers(root), [])
})

test('bad targets and methods are refused', async (t) => {
  const { url } = await start(t)
  for (const path of ['missing/x.bin', '..%2fx.bin', '.hidden', '%2e%2e/x']) {
    t.is((await upload(`${url}/stream/up/${path}`, Buffer.from('x'))).status, 404, path)
  }
  const get = await request(`${url}/stream/up/a.txt`)
  t.is(get.status, 405)
  t.is(get.headers.allow, 'PUT, POST')
})

test('a body of exactly maxUploadSize is accepted', async (t) => {
  const { url } = await start(t)
  const res = await upload(`${url}/stream/up/exact.bin`, Buffer.alloc(MiB, 9))
  t.is(res.status, 201)
  t.is(res.json.size, MiB)
})

test('an oversized Content-Length is answered 413 before any body byte is sent', async (t) => {
  const { port, server, root } = await start(t)
  const socket = await connect(port)
  const closed = untilClosed(socket)
  // Only the head is sent; the body never is. The answer must come anyway.
  socket.write(`PUT /stream/up/big.bin HTTP/1.1\r\nHost: x\r\nContent-Length: ${10 * MiB}\r\n\r\n`)
  const { text } = await closed
  t.regex(text, /^HTTP\/1\.1 413 Payload Too Large\r\n/)
  t.regex(text, /\r\nconnection: close\r\n/i)
  t.is(server.stats().rejections.body_too_large, 1)
  t.false(existsSync(join(root, 'big.bin')))
})

test('Expect: 100-continue gets 413 instead of 100 when too large, 100 then 201 otherwise', async (t) => {
  const { port } = await start(t)
  const refused = await connect(port)
  const refusedClosed = untilClosed(refused)
  refused.write(`PUT /stream/up/big.bin HTTP/1.1\r\nHost: x\r\nContent-Length: ${2 * MiB}\r\nExpect: 100-continue\r\n\r\n`)
  t.regex((await refusedClosed).text, /^HTTP\/1\.1 413 /)

  const accepted = await connect(port)
  const acceptedClosed = untilClosed(accepted)
  const firstLine = new Promise((resolve) => accepted.once('data', (chunk) => resolve(chunk.toString())))
  accepted.write(`PUT /stream/up/ok.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n`)
  t.regex(await firstLine, /^HTTP\/1\.1 100 Continue\r\n/)
  accepted.write('12345')
  t.regex((await acceptedClosed).text, /HTTP\/1\.1 201 Created\r\n/)
})

test('a chunked body is cut off with 413 as soon as it passes the cap; nothing is left', async (t) => {
  const { url, root, server } = await start(t)
  let sent = 0
  async function* endless() {
    for (let i = 0; i < 64; i++) {
      sent += 64 * 1024
      yield Buffer.alloc(64 * 1024, 1)
    }
  }
  const res = await upload(`${url}/stream/up/chunked.bin`, endless()).catch((err) => ({ status: err.code }))
  t.is(res.status, 413)
  t.true(sent <= 4 * MiB, `the client got to send ${sent} bytes`)
  t.is(server.stats().rejections.body_too_large, 1)
  t.false(existsSync(join(root, 'chunked.bin')))
  t.deepEqual(await eventually(() => leftovers(root).length === 0 && leftovers(root)), [])
})

test('readTimeout: a body that stops arriving gets 408; the temp file is removed', async (t) => {
  const { port, root, server } = await start(t, { streaming: { readTimeout: 500 } })
  const socket = await connect(port)
  const started = Date.now()
  const closed = untilClosed(socket)
  socket.write('PUT /stream/up/slow.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc')
  const { text, at } = await closed
  t.regex(text, /^HTTP\/1\.1 408 /)
  t.true(at - started >= 450 && at - started < 2000, `closed after ${at - started} ms`)
  t.is(server.stats().rejections.read_timeout, 1)
  t.false(existsSync(join(root, 'slow.bin')))
  t.deepEqual(leftovers(root), [])
})

test('minUploadRate: a trickle is cut off after the grace period', async (t) => {
  const { port, root, server } = await start(t, {
    streaming: { minUploadRate: '1kb', minUploadRateGrace: 1000, readTimeout: 10_000 },
  })
  const socket = await connect(port)
  const started = Date.now()
  const closed = untilClosed(socket)
  socket.write('PUT /stream/up/trickle.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n')
  const drip = setInterval(() => socket.writable && socket.write('x'), 100)
  const { text, at } = await closed
  clearInterval(drip)
  t.regex(text, /^HTTP\/1\.1 408 /)
  // 5x the 1 s grace for a loaded machine; still half the 10 s readTimeout that would end it otherwise.
  t.true(at - started >= 900 && at - started < 5000, `closed after ${at - started} ms`)
  t.is(server.stats().rejections.upload_too_slow, 1)
  t.deepEqual(leftovers(root), [])
})

test('uploadTimeout bounds a whole upload', async (t) => {
  const { port, server } = await start(t, { streaming: { uploadTimeout: 1000, minUploadRate: 0 } })
  const socket = await connect(port)
  const started = Date.now()
  const closed = untilClosed(socket)
  socket.write('PUT /stream/up/long.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n')
  const drip = setInterval(() => socket.writable && socket.write('x'.repeat(100)), 100)
  const { text, at } = await closed
  clearInterval(drip)
  t.regex(text, /^HTTP\/1\.1 408 /)
  // 5x the 1 s timeout for a loaded machine; the drip alone would take 100 s, the readTimeout 30 s.
  t.true(at - started >= 900 && at - started < 5000, `closed after ${at - started} ms`)
  t.is(server.stats().rejections.upload_timeout, 1)
})

test('a client aborting mid-upload leaves no temp file and no final file', async (t) => {
  const { port, root } = await start(t)
  const socket = await connect(port)
  socket.write(`PUT /stream/up/aborted.bin HTTP/1.1\r\nHost: x\r\nContent-Length: ${MiB}\r\n\r\n`)
  socket.write(Buffer.alloc(300 * 1024, 7))
  await eventually(() => leftovers(root).length === 1)
  socket.resetAndDestroy()
  t.true(await eventually(() => leftovers(root).length === 0))
  t.false(existsSync(join(root, 'aborted.bin')))
})

test('closing the server mid-upload removes the temp file', async (t) => {
  const { port, root, server } = await start(t)
  const socket = await connect(port)
  socket.on('error', () => {})
  socket.write(`PUT /stream/up/closing.bin HTTP/1.1\r\nHost: x\r\nContent-Length: ${MiB}\r\n\r\n`)
  socket.write(Buffer.alloc(100 * 1024, 7))
  await eventually(() => leftovers(root).length === 1)
  await server.close({ drain: 200 })
  // The disk worker drops the temporary file as soon as its upload is abandoned.
  t.true(await eventually(() => leftovers(root).length === 0, { timeout: 2000 }))
  t.false(existsSync(join(root, 'closing.bin')))
  socket.destroy()
})

test('concurrent uploads of one name: one complete body wins, never a mix', async (t) => {
  const { url, root } = await start(t, { streaming: { maxUploadSize: 16 * MiB } })
  const bodies = [1, 2, 3].map((byte) => Buffer.alloc(4 * MiB, byte))
  async function* slowly(buffer) {
    for (let offset = 0; offset < buffer.length; offset += 256 * 1024) {
      yield buffer.subarray(offset, offset + 256 * 1024)
      await sleep(5)
    }
  }
  const results = await Promise.all(bodies.map((body) => upload(`${url}/stream/up/same.bin`, slowly(body))))
  t.deepEqual(results.map((r) => r.status), [201, 201, 201])
  const final = readFileSync(join(root, 'same.bin'))
  t.true(bodies.some((body) => body.equals(final)), 'the file is exactly one of the bodies')
  t.deepEqual(leftovers(root), [])
})

test('overwrite: false answers 409 and keeps the existing file', async (t) => {
  const { url, root } = await start(t, { uploads: { overwrite: false } })
  writeFileSync(join(root, 'kept.txt'), 'original')
  const res = await upload(`${url}/stream/up/kept.txt`, Buffer.from('replacement'))
  t.is(res.status, 409)
  t.is(readFileSync(join(root, 'kept.txt'), 'utf8'), 'original')
  t.is((await upload(`${url}/stream/up/new.txt`, Buffer.from('new'))).status, 201)
})

test('rateLimitUploadBandwidth paces reading the body', async (t) => {
  const { url } = await start(t, { streaming: { rateLimitUploadBandwidth: MiB, maxUploadSize: 4 * MiB } })
  const started = Date.now()
  const res = await upload(`${url}/stream/up/paced.bin`, Buffer.alloc(2 * MiB, 5))
  const seconds = (Date.now() - started) / 1000
  t.is(res.status, 201)
  // One chunk of burst, then 1 MiB/s: about 1.94 s for 2 MiB.
  // The lower bound is the pacing; the upper one only catches a stall (3x, for a loaded machine).
  t.true(seconds >= 1.8 && seconds < 6, `took ${seconds} s`)
})

test('rateLimitRequests: burst, then 429 with Retry-After and RateLimit headers, per client', async (t) => {
  const { url, server } = await start(t, { streaming: { rateLimitRequests: 5, rateLimitWindow: '1m' } })
  const localAddress = '127.0.0.10'
  const seen = []
  for (let i = 0; i < 5; i++) {
    const res = await request(`${url}/stream/files/none`, { localAddress })
    t.is(res.status, 404)
    t.is(res.headers['ratelimit-policy'], '"default";q=5;w=60')
    seen.push(/r=(\d+)/.exec(res.headers.ratelimit)[1])
  }
  t.deepEqual(seen, ['4', '3', '2', '1', '0'])
  const refused = await request(`${url}/stream/files/none`, { localAddress })
  t.is(refused.status, 429)
  const retryAfter = Number(refused.headers['retry-after'])
  t.true(retryAfter >= 1 && retryAfter <= 12, `Retry-After ${retryAfter}`)
  t.regex(refused.headers.ratelimit, /^"default";r=0;t=\d+$/)
  t.is(server.stats().rejections.rate_limited, 1)
  const other = await request(`${url}/stream/files/none`, { localAddress: '127.0.0.11' })
  t.is(other.status, 404, 'another client has its own budget')
})

test('a 1 GiB upload keeps the server process memory flat (RSS growth < 16 MiB)', async (t) => {
  const dir = fixture()
  t.teardown(dir.cleanup)
  const { port, rss } = await uploadsProcess(t, dir.root, {}, { maxUploadSize: '2gb' })
  await upload(`http://127.0.0.1:${port}/up/warm.bin`, Buffer.alloc(MiB))
  const chunk = Buffer.alloc(MiB, 3)
  async function* gigabyte() {
    for (let i = 0; i < 1024; i++) yield chunk
  }
  const { result: res, growth } = await rssGrowthDuring(rss, () => upload(`http://127.0.0.1:${port}/up/huge.bin`, gigabyte()))
  t.is(res.status, 201)
  t.is(res.json.size, 1024 * MiB)
  t.true(growth < 16, `server RSS grew ${growth.toFixed(1)} MiB`)
  t.log(`server RSS growth during a 1 GiB upload: ${growth.toFixed(1)} MiB`)
})

test('identify: rate limits key on the user it names, else on the address', async (t) => {
  const dir = fixture({ 'a.txt': 'a' })
  t.teardown(dir.cleanup)
  const server = new Server()
  const app = new StreamingApp({
    rateLimitRequests: 2,
    identify: (req) => new URL(req.url).searchParams.get('token') ?? undefined,
  })
  app.files('/files', { root: dir.root })
  server.mount('/', app)
  const { url } = await server.listen({ port: 0 })
  t.teardown(() => server.close({ drain: 0 }))
  const get = (query, localAddress) => request(`${url}/files/a.txt${query}`, { localAddress }).then((r) => r.status)
  // Alice spends her budget from two addresses: it is hers, not theirs.
  t.deepEqual([await get('?token=alice', '127.0.0.12'), await get('?token=alice', '127.0.0.13')], [200, 200])
  t.is(await get('?token=alice', '127.0.0.14'), 429)
  // Bob, from one of Alice's addresses, has his own budget.
  t.is(await get('?token=bob', '127.0.0.12'), 200)
  // Anonymous requests fall back to the address.
  t.deepEqual([await get('', '127.0.0.15'), await get('', '127.0.0.15'), await get('', '127.0.0.15')], [200, 200, 429])
})

// ---- stale temporaries: an upload cut by a crash leaves `.NAME.XXXXXX.upload`; the next start removes it ----

test('at listen an uploads mount removes its own stale temporaries, and nothing else', async (t) => {
  const dir = fixture()
  t.teardown(dir.cleanup)
  const root = dir.root
  const hourAgo = new Date(Date.now() - 3600_000)
  const make = (name, { old = true } = {}) => {
    writeFileSync(join(root, name), 'partial')
    if (old) utimesSync(join(root, name), hourAgo, hourAgo)
  }
  make('.report.pdf.Ab3xZ9.upload') // ours and stale: removed
  make('.fresh.bin.Qw12Er.upload', { old: false }) // ours but fresh (a concurrent instance's upload)
  const kept = [
    '.hidden', // a dotfile that does not match
    '.report.pdf.Ab3xZ.upload', // random part one short
    '.report.pdf.Ab3xZ9.uploads',
    '..report.pdf.Ab3xZ9.upload', // a name that cannot be uploaded
    '.report.pdf.Ab-xZ9.upload', // not tempfile's alphabet
    'report.pdf.Ab3xZ9.upload', // no leading dot
    '.Ab3xZ9.upload', // no name
    'plain.txt',
  ]
  kept.forEach((name) => make(name))
  mkdirSync(join(root, '.sub.bin.Ab3xZ9.upload')) // a folder named like one
  utimesSync(join(root, '.sub.bin.Ab3xZ9.upload'), hourAgo, hourAgo)
  mkdirSync(join(root, 'nested'))
  make('nested/.deep.bin.Ab3xZ9.upload') // in a subfolder: the scan stays in the mount's folder

  const server = new Server()
  const app = new StreamingApp({ rateLimitRequests: 0, uploadTimeout: '1m' })
  app.uploads('/up', { dir: root })
  server.mount('/', app)
  const { url } = await server.listen({ port: 0 })
  t.teardown(() => server.close({ drain: 0 }))

  t.true(await eventually(() => server.stats().staleUploadsRemoved === 1), `counter ${server.stats().staleUploadsRemoved}`)
  t.deepEqual(
    readdirSync(root).sort(),
    [...kept, '.fresh.bin.Qw12Er.upload', '.sub.bin.Ab3xZ9.upload', 'nested'].sort(),
  )
  t.true(existsSync(join(root, 'nested/.deep.bin.Ab3xZ9.upload')))
  t.is(server.stats().rejections.body_too_large, 0)
  // Uploads work as before beside it.
  const res = await upload(`${url}/up/report.pdf`, Buffer.from('whole'))
  t.is(res.status, 201)
  t.is(readFileSync(join(root, 'report.pdf'), 'utf8'), 'whole')
  t.is(server.stats().staleUploadsRemoved, 1)
})

test('an upload cut by kill -9 leaves its temporary; a restart after uploadTimeout removes it', async (t) => {
  const dir = fixture()
  t.teardown(dir.cleanup)
  const script = (uploadTimeout) => `const { Server, StreamingApp } = floodgate
    const server = new Server()
    const app = new StreamingApp({ rateLimitRequests: 0, uploadTimeout: ${JSON.stringify(uploadTimeout)} })
    app.uploads('/up', { dir: ${JSON.stringify(dir.root)} })
    server.mount('/', app)
    server.listen({ port: 0 }).then(({ port }) => console.log('READY ' + port + ' ' + server.stats().staleUploadsRemoved))`
  const first = await serverProcess(t, script('5m'))
  const socket = await connect(first.port)
  socket.on('error', () => {})
  socket.write(`PUT /up/cut.bin HTTP/1.1\r\nHost: x\r\nContent-Length: ${MiB}\r\n\r\n`)
  socket.write(Buffer.alloc(64 * 1024, 1))
  const temps = () => readdirSync(dir.root).filter((name) => /^\.cut\.bin\.[A-Za-z0-9]{6}\.upload$/.test(name))
  t.is((await eventually(() => temps().length === 1 && temps(), { timeout: 10_000 })).length, 1, 'the upload is under way')
  const exited = new Promise((resolve) => first.child.once('exit', resolve))
  first.child.kill('SIGKILL')
  await exited
  socket.destroy()
  t.is(temps().length, 1, 'the crash left the temporary behind')

  await sleep(1_200) // older than the next instance's uploadTimeout of 1 s
  const server = new Server()
  const app = new StreamingApp({ rateLimitRequests: 0, uploadTimeout: '1s' })
  app.uploads('/up', { dir: dir.root })
  server.mount('/', app)
  await server.listen({ port: 0 })
  t.teardown(() => server.close({ drain: 0 }))
  t.true(await eventually(() => server.stats().staleUploadsRemoved === 1))
  t.deepEqual(temps(), [])
})

test('a chunked upload with a garbage chunk-size line gets 400 and close, counted; nothing is left', async (t) => {
  const { port, root, server } = await start(t)
  const socket = await connect(port)
  const closed = untilClosed(socket)
  socket.write('PUT /stream/up/bad.bin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz-not-hex\r\n')
  const { text } = await closed
  t.regex(text, /^HTTP\/1\.1 400 /)
  t.regex(text, /\r\nconnection: close\r\n/i)
  t.is(server.stats().rejections.bad_request, 1)
  t.false(existsSync(join(root, 'bad.bin')))
  t.deepEqual(leftovers(root), [])
})
