// multipart/form-data uploads: streamed part by part, every file renamed into place only when the
// whole request arrived, every limit with its own status and rejection reason, malformed input
// refused with nothing left behind. Clients: curl -F (HTTP/1.1 and h2c), fetch + FormData, raw
// sockets, a real <form> submitted by headless Chromium.
import test from 'ava'
import { createHash } from 'node:crypto'
import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import http from 'node:http'
import {
  Server,
  StreamingApp,
  fixture,
  connect,
  untilClosed,
  rawExchange,
  eventually,
  curl,
  curlTool,
  chromiumTool,
  needs,
  openInChromium,
  uploadsProcess,
  rssGrowthDuring,
} from './helpers.mjs'

const MiB = 1024 * 1024
const sha256 = (buffer) => createHash('sha256').update(buffer).digest('hex')

/** A server with uploads at /stream/up over a fresh folder. */
async function start(t, { streaming = {}, uploads = {}, server: serverOptions = {} } = {}) {
  const dir = fixture()
  t.teardown(dir.cleanup)
  const server = new Server({ maxConnectionsPerIp: 0, ...serverOptions })
  const app = new StreamingApp({ rateLimitRequests: 0, maxUploadSize: 4 * MiB, ...streaming })
  app.uploads('/up', { dir: dir.root, ...uploads })
  server.mount('/stream', app)
  const { url, port } = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  return { server, url, port, root: dir.root }
}

const files = (root) => readdirSync(root).sort()

/** A multipart body from [{ name, filename?, type?, data, headers? }] (raw header lines allowed). */
function multipart(boundary, parts, { end = true } = {}) {
  const chunks = []
  for (const part of parts) {
    let head = `--${boundary}\r\n`
    if (part.headers !== undefined) head += part.headers
    else {
      head += `Content-Disposition: form-data; name="${part.name}"${part.filename !== undefined ? `; filename="${part.filename}"` : ''}\r\n`
      if (part.type) head += `Content-Type: ${part.type}\r\n`
    }
    chunks.push(Buffer.from(`${head}\r\n`, 'latin1'), Buffer.from(part.data ?? ''), Buffer.from('\r\n'))
  }
  if (end) chunks.push(Buffer.from(`--${boundary}--\r\n`))
  return Buffer.concat(chunks)
}

/** A whole request with `body` over a raw socket; resolves the status line's code and the text. */
async function raw(port, body, { contentType = 'multipart/form-data; boundary=XyZ', path = '/stream/up', extra = '' } = {}) {
  const head = `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: ${contentType}\r\nContent-Length: ${body.length}\r\nConnection: close\r\n${extra}\r\n`
  const text = await rawExchange(port, Buffer.concat([Buffer.from(head, 'latin1'), body]))
  return { status: Number(text.split(' ')[1]), text }
}

test('fetch with FormData: files stored under sanitised names, fields handed back, originals as data only', async (t) => {
  const { url, root } = await start(t)
  const one = Buffer.alloc(300_000, 7)
  const two = Buffer.from('second file\n')
  const form = new FormData()
  form.append('title', 'holiday')
  form.append('tag', 'a')
  form.append('tag', 'b')
  form.append('photo', new Blob([one], { type: 'image/png' }), '../../etc/photo.png')
  form.append('notes', new Blob([two], { type: 'text/plain' }), '.env')
  const response = await fetch(`${url}/stream/up`, { method: 'POST', body: form })
  t.is(response.status, 201)
  const listing = await response.json()
  t.deepEqual(listing.fields, { title: 'holiday', tag: ['a', 'b'] })
  t.deepEqual(listing.files, [
    { field: 'photo', name: 'photo.png', originalName: '../../etc/photo.png', size: one.length, sha256: sha256(one), type: 'image/png' },
    { field: 'notes', name: 'env', originalName: '.env', size: two.length, sha256: sha256(two), type: 'text/plain' },
  ])
  t.deepEqual(files(root), ['env', 'photo.png'])
  t.is(sha256(readFileSync(join(root, 'photo.png'))), sha256(one))
  t.is(sha256(readFileSync(join(root, 'env'))), sha256(two))
})

needs(curlTool, test)('curl -F over HTTP/1.1 and over h2c stores both files', async (t) => {
  const { url, root } = await start(t, { server: { http2: true } })
  const src = fixture({ 'a.bin': Buffer.alloc(2 * MiB, 1), 'b.txt': 'bee\n' })
  t.teardown(src.cleanup)
  for (const [version, flags] of [['1.1', ['--http1.1']], ['2', ['--http2-prior-knowledge']]]) {
    const { code, stdout } = await curl([
      '-s',
      ...flags,
      '-w',
      '\n%{http_code} %{http_version}',
      '-F',
      `a=@${join(src.root, 'a.bin')};filename=a${version}.bin`,
      '-F',
      `b=@${join(src.root, 'b.txt')};type=text/plain`,
      '-F',
      'comment=hi there',
      `${url}/stream/up`,
    ])
    t.is(code, 0)
    const text = stdout.toString()
    const [json, status] = [text.slice(0, text.lastIndexOf('\n')), text.slice(text.lastIndexOf('\n') + 1)]
    t.is(status, `201 ${version}`)
    const listing = JSON.parse(json)
    t.deepEqual(listing.fields, { comment: 'hi there' })
    t.deepEqual(
      listing.files.map((file) => [file.name, file.size, file.sha256, file.type]),
      [
        [`a${version}.bin`, 2 * MiB, sha256(Buffer.alloc(2 * MiB, 1)), 'application/octet-stream'],
        ['b.txt', 4, sha256(Buffer.from('bee\n')), 'text/plain'],
      ],
    )
  }
  t.deepEqual(files(root), ['a1.1.bin', 'a2.bin', 'b.txt'])
})

test('onUpload decides the response, after the files are in place; it sees the request', async (t) => {
  let seen
  const dir = fixture()
  t.teardown(dir.cleanup)
  const server = new Server()
  const app = new StreamingApp({ rateLimitRequests: 0 })
  app.uploads('/up', {
    dir: dir.root,
    multipart: { naming: 'random' },
    onUpload: (list, fields, req) => {
      seen = { list, fields, user: req.headers.get('x-user'), method: req.method, onDisk: readdirSync(dir.root) }
      return Response.json({ stored: list.map((file) => file.name), by: req.headers.get('x-user') }, { status: 200 })
    },
  })
  app.uploads('/plain', { dir: dir.root, onUpload: () => undefined })
  server.mount('/stream', app)
  const { url } = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  const form = new FormData()
  form.append('doc', new Blob(['hello']), 'Report Final.PDF')
  form.append('k', 'v')
  const response = await fetch(`${url}/stream/up`, { method: 'POST', body: form, headers: { 'x-user': 'ann' } })
  t.is(response.status, 200)
  const answer = await response.json()
  t.regex(answer.stored[0], /^[0-9a-f]{32}\.pdf$/)
  t.is(answer.by, 'ann')
  t.deepEqual(seen.fields, { k: 'v' })
  t.is(seen.method, 'POST')
  t.is(seen.list[0].originalName, 'Report Final.PDF')
  t.deepEqual(seen.onDisk, [answer.stored[0]])
  // undefined from the hook: the default 201 listing.
  const again = await fetch(`${url}/stream/plain`, { method: 'POST', body: form })
  t.is(again.status, 201)
  t.is((await again.json()).files[0].name, 'Report Final.PDF')
})

test('each limit has its own status and rejection reason, and leaves nothing behind', async (t) => {
  const { server, port, root } = await start(t, {
    streaming: { maxUploadSize: 256 * 1024 },
    uploads: {
      multipart: { maxFiles: 2, maxFields: 2, maxFieldSize: 100, maxParts: 4, maxPartHeaderSize: 512, maxFileSize: 50_000, allowedTypes: ['image/*', 'text/plain'] },
    },
  })
  const file = (name, size = 10, type = 'text/plain') => ({ name, filename: `${name}.txt`, type, data: Buffer.alloc(size, 97) })
  const field = (name, value = 'v') => ({ name, data: value })
  const cases = [
    ['too many files', [file('a'), file('b'), file('c')], 413, 'multipart_too_many_files'],
    ['too many fields', [field('a'), field('b'), field('c')], 413, 'multipart_too_many_fields'],
    ['field too large', [file('a'), field('a', 'x'.repeat(101))], 413, 'multipart_field_too_large'],
    ['too many parts', [file('a'), field('a'), file('b'), field('b'), field('c')], 413, 'multipart_too_many_parts'],
    ['part header too large', [file('a'), { headers: `Content-Disposition: form-data; name="b"\r\nX-Pad: ${'p'.repeat(2000)}\r\n`, data: 'v' }], 431, 'multipart_header_too_large'],
    ['file too large', [file('a'), file('b', 50_001)], 413, 'file_too_large'],
    ['media type not allowed', [file('a'), file('b', 10, 'application/x-msdownload')], 415, 'unsupported_media_type'],
  ]
  for (const [what, parts, status, reason] of cases) {
    const response = await raw(port, multipart('XyZ', parts))
    t.is(response.status, status, what)
    t.is(server.stats().rejections[reason], 1, what)
    t.deepEqual(files(root), [], what)
  }
  // The whole body past maxUploadSize (sent chunked, so only counting can tell): 413.
  const total = await start(t, { streaming: { maxUploadSize: 256 * 1024 } })
  const body = multipart('XyZ', [0, 1, 2].map((i) => file(`f${i}`, 100_000)))
  const chunked = await new Promise((resolve, reject) => {
    const req = http.request(`http://127.0.0.1:${total.port}/stream/up`, { method: 'POST', agent: false, headers: { 'content-type': 'multipart/form-data; boundary=XyZ' } }, (res) => {
      res.resume()
      resolve(res.statusCode)
    })
    req.on('error', reject)
    for (let offset = 0; offset < body.length; offset += 16_384) req.write(body.subarray(offset, offset + 16_384))
    req.end()
  })
  t.is(chunked, 413)
  t.is(total.server.stats().rejections.body_too_large, 1)
  t.deepEqual(files(total.root), [])
})

test('a file over maxFileSize is refused as soon as it passes, while the client is still sending', async (t) => {
  const { server, port, root } = await start(t, { streaming: { maxUploadSize: '1gb' }, uploads: { multipart: { maxFileSize: MiB } } })
  const socket = await connect(port)
  const closed = untilClosed(socket)
  let answered = false
  closed.then(() => (answered = true))
  socket.write(`POST /stream/up HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: ${512 * MiB}\r\n\r\n`)
  socket.write('--XyZ\r\nContent-Disposition: form-data; name="f"; filename="big.bin"\r\n\r\n')
  let sent = 0
  const piece = Buffer.alloc(64 * 1024, 1)
  while (!answered && sent < 64 * MiB) {
    if (!socket.write(piece)) await new Promise((resolve) => socket.once('drain', resolve).once('close', resolve))
    sent += piece.length
  }
  const { text } = await closed
  t.regex(text, /^HTTP\/1\.1 413 /)
  t.regex(text, /File too large/)
  t.true(sent < 32 * MiB, `answered after ${sent} bytes`)
  t.is(server.stats().rejections.file_too_large, 1)
  t.deepEqual(files(root), [])
})

test('malformed multipart gets 400 and leaves nothing behind', async (t) => {
  const { server, port, root } = await start(t)
  const good = { name: 'f', filename: 'f.txt', data: 'content' }
  const cases = [
    ['no boundary', multipart('XyZ', [good]), 'multipart/form-data'],
    ['empty boundary', multipart('XyZ', [good]), 'multipart/form-data; boundary='],
    ['boundary too long', multipart('b'.repeat(71), [good]), `multipart/form-data; boundary=${'b'.repeat(71)}`],
    ['wrong boundary', multipart('Other', [good])],
    ['part with no headers', multipart('XyZ', [good, { headers: '', data: 'x' }])],
    ['headers without Content-Disposition', multipart('XyZ', [{ headers: 'Content-Type: text/plain\r\n', data: 'x' }])],
    ['Content-Disposition that is not form-data', multipart('XyZ', [{ headers: 'Content-Disposition: attachment; name="f"\r\n', data: 'x' }])],
    ['unterminated body', multipart('XyZ', [good], { end: false })],
    ['cut inside a part', multipart('XyZ', [good]).subarray(0, 60)],
    ['a boundary that never comes', Buffer.alloc(200_000, 120)],
    ['10,000 empty parts', Buffer.from(`${'--XyZ\r\n\r\n\r\n'.repeat(10_000)}--XyZ--\r\n`)],
    ['a broken header line', multipart('XyZ', [{ headers: 'Content-Disposition form-data\r\n', data: 'x' }])],
  ]
  let count = 0
  for (const [what, body, contentType] of cases) {
    const response = await raw(port, body, contentType ? { contentType } : {})
    t.is(response.status, 400, what)
    t.deepEqual(files(root), [], what)
    count += 1
  }
  t.is(server.stats().rejections.multipart_malformed, count)
  // 10,000 empty but named parts: a limit, not malformed.
  const many = Buffer.from(`${'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\n\r\n'.repeat(10_000)}--XyZ--\r\n`)
  t.is((await raw(port, many)).status, 413)
  t.is(server.stats().rejections.multipart_too_many_fields, 1)
})

test('all or nothing by default; atomic: part keeps the files that completed', async (t) => {
  const parts = [
    { name: 'a', filename: 'first.txt', data: 'first' },
    { name: 'b', filename: 'second.txt', data: Buffer.alloc(20_000) },
  ]
  const whole = await start(t, { uploads: { multipart: { maxFileSize: 10_000 } } })
  t.is((await raw(whole.port, multipart('XyZ', parts))).status, 413)
  t.deepEqual(files(whole.root), [])
  const each = await start(t, { uploads: { multipart: { maxFileSize: 10_000, atomic: 'part' } } })
  t.is((await raw(each.port, multipart('XyZ', parts))).status, 413)
  t.deepEqual(files(each.root), ['first.txt'])
  t.is(readFileSync(join(each.root, 'first.txt'), 'utf8'), 'first')
})

test('overwrite: false refuses a taken name, and two files of one form may not share a name (409)', async (t) => {
  const { port, root } = await start(t, { uploads: { overwrite: false } })
  writeFileSync(join(root, 'taken.txt'), 'old')
  const taken = await raw(port, multipart('XyZ', [{ name: 'a', filename: 'new.txt', data: 'n' }, { name: 'b', filename: 'taken.txt', data: 'x' }]))
  t.is(taken.status, 409)
  t.deepEqual(files(root), ['taken.txt'])
  t.is(readFileSync(join(root, 'taken.txt'), 'utf8'), 'old')
  const twice = await raw(port, multipart('XyZ', [{ name: 'a', filename: 'same.txt', data: '1' }, { name: 'b', filename: 'dir/same.txt', data: '2' }]))
  t.is(twice.status, 409)
  t.deepEqual(files(root), ['taken.txt'])
})

test('a client killed mid-part, a stalled client and a server closed mid-upload leave nothing behind', async (t) => {
  const { server, port, root } = await start(t, { streaming: { readTimeout: '1s', maxUploadSize: '1gb' } })
  const begin = (socket) => {
    socket.write(`POST /stream/up HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: ${100 * MiB}\r\n\r\n`)
    socket.write('--XyZ\r\nContent-Disposition: form-data; name="f"; filename="f.bin"\r\n\r\n')
    socket.write(Buffer.alloc(3 * MiB, 1))
  }
  // Killed mid-part.
  const killed = await connect(port)
  begin(killed)
  await eventually(() => files(root).length === 1)
  killed.destroy()
  t.truthy(await eventually(() => files(root).length === 0))
  // Stalled: readTimeout answers 408.
  const stalled = await connect(port)
  const stalledClosed = untilClosed(stalled)
  begin(stalled)
  const { text } = await stalledClosed
  t.regex(text, /^HTTP\/1\.1 408 /)
  t.is(server.stats().rejections.read_timeout, 1)
  t.deepEqual(files(root), [])
  // The server closes while a client is mid-upload.
  const cut = await connect(port)
  const cutClosed = untilClosed(cut)
  begin(cut)
  await eventually(() => files(root).length === 1)
  await server.close({ drain: 0 })
  await cutClosed
  t.truthy(await eventually(() => files(root).length === 0))
})

test('the minimum upload rate applies to multipart bodies too', async (t) => {
  const { server, port, root } = await start(t, { streaming: { minUploadRate: '100kb', minUploadRateGrace: '1s' } })
  const socket = await connect(port)
  const closed = untilClosed(socket)
  socket.write(`POST /stream/up HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: ${MiB}\r\n\r\n`)
  socket.write('--XyZ\r\nContent-Disposition: form-data; name="f"; filename="f.bin"\r\n\r\n')
  const timer = setInterval(() => socket.writable && socket.write(Buffer.alloc(1000, 1)), 100)
  const { text } = await closed
  clearInterval(timer)
  t.regex(text, /^HTTP\/1\.1 408 /)
  t.is(server.stats().rejections.upload_too_slow, 1)
  t.deepEqual(files(root), [])
})

test('raw uploads to a name are unchanged; multipart is parsed only when POSTed to the mount itself', async (t) => {
  const { port, root } = await start(t)
  const body = multipart('XyZ', [{ name: 'f', filename: 'x.txt', data: 'x' }])
  t.is((await raw(port, body, { path: '/stream/up/raw.bin' })).status, 201)
  t.is(sha256(readFileSync(join(root, 'raw.bin'))), sha256(body))
  t.is((await raw(port, Buffer.from('x'), { contentType: 'text/plain' })).status, 404)
})

test('a form of 1,000 × 64 KiB files keeps the server process memory flat (RSS growth < 16 MiB)', async (t) => {
  const dir = fixture()
  t.teardown(dir.cleanup)
  const { port, rss } = await uploadsProcess(t, dir.root, { fsync: false, multipart: { maxFiles: 1000 } })
  const parts = Array.from({ length: 1000 }, (_, i) => ({ name: `f${i}`, filename: `f${i}.bin`, data: Buffer.alloc(64 * 1024, i % 251) }))
  t.is((await raw(port, multipart('XyZ', parts.slice(0, 10)), { path: '/up' })).status, 201) // warm up
  const { result: response, growth } = await rssGrowthDuring(rss, () => raw(port, multipart('XyZ', parts), { path: '/up' }))
  t.is(response.status, 201)
  t.is(files(dir.root).length, 1000)
  t.true(growth < 16, `server RSS grew ${growth.toFixed(1)} MiB`)
  t.log(`server RSS growth during a 1,000-file form: ${growth.toFixed(1)} MiB`)
})

test('bad multipart options throw a TypeError naming the option', (t) => {
  const app = new StreamingApp()
  const dir = fixture()
  t.teardown(dir.cleanup)
  for (const [options, name] of [
    [{ multipart: { maxPartHeaderSize: 10 } }, 'multipart.maxPartHeaderSize'],
    [{ multipart: { allowedTypes: ['nonsense'] } }, 'multipart.allowedTypes'],
    [{ multipart: { atomic: 'sometimes' } }, 'multipart.atomic'],
    [{ multipart: { maxFiles: -1 } }, 'multipart.maxFiles'],
    [{ multipart: { unknown: 1 } }, 'unknown'],
    [{ onUpload: 'yes' }, 'onUpload'],
  ]) {
    const error = t.throws(() => app.uploads('/up', { dir: dir.root, ...options }), { instanceOf: TypeError })
    t.true(error.message.includes(name), `${error.message} names ${name}`)
  }
})

needs(chromiumTool, test)('a real <form enctype="multipart/form-data"> with two files, submitted by Chromium', async (t) => {
  const dir = fixture()
  t.teardown(dir.cleanup)
  const app = new StreamingApp({ rateLimitRequests: 0 })
  let stored
  app.uploads('/up', {
    dir: dir.root,
    onUpload: (list, fields) => {
      stored = { list, fields }
      return new Response('<!doctype html><p>stored', { headers: { 'content-type': 'text/html' } })
    },
  })
  const script = `
    const form = document.createElement('form')
    form.method = 'POST'
    form.action = '/up'
    form.enctype = 'multipart/form-data'
    form.innerHTML = '<input name="caption" value="two files"><input type="file" name="one"><input type="file" name="two">'
    document.documentElement.append(form) // the page is a bare <script>: no body yet
    const files = [new File(['first file\\n'], 'one.txt', { type: 'text/plain' }), new File([new Uint8Array(100000).fill(66)], 'two.bin', { type: 'application/octet-stream' })]
    form.querySelectorAll('input[type=file]').forEach((input, i) => {
      const transfer = new DataTransfer()
      transfer.items.add(files[i])
      input.files = transfer.files
    })
    form.submit()
  `
  const { running } = await openInChromium(t, app, script)
  const report = await eventually(() => running() && stored, { timeout: 50_000, interval: 100 })
  t.deepEqual(report.fields, { caption: 'two files' })
  t.deepEqual(
    report.list.map((file) => [file.field, file.name, file.size, file.sha256]),
    [
      ['one', 'one.txt', 11, sha256(Buffer.from('first file\n'))],
      ['two', 'two.bin', 100000, sha256(Buffer.alloc(100000, 66))],
    ],
  )
  t.deepEqual(files(dir.root), ['one.txt', 'two.bin'])
})
