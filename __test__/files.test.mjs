// Files mount: content, headers, conditional requests, ranges, path safety.
import test from 'ava'
import { symlinkSync } from 'node:fs'
import { join } from 'node:path'
import { fixture, startFiles, request, rawExchange, curl, serverProcess, needs, curlTool } from './helpers.mjs'

const DIGITS = Buffer.from('0123456789'.repeat(100)) // 1000 bytes
const files = {
  'digits.txt': DIGITS,
  'page.html': '<h1>hi</h1>',
  'nested/deep/data.json': '{"a":1}',
  'empty.bin': Buffer.alloc(0),
  'résumé €.pdf': 'pdf',
  '.env': 'SECRET=1',
  '.git/config': '[core]',
}

// Each test gets its own folder and server.
const filesTest = (title, body, base = test) =>
  base(title, async (t) => {
    const dir = fixture(files)
    t.teardown(dir.cleanup)
    t.context = { ...(await startFiles(t, { root: dir.root })), root: dir.root }
    await body(t)
  })

filesTest('GET serves the file with length, type, validators', async (t) => {
  const res = await request(`${t.context.base}/digits.txt`)
  t.is(res.status, 200)
  t.deepEqual(res.body, DIGITS)
  t.is(res.headers['content-length'], '1000')
  t.is(res.headers['content-type'], 'text/plain; charset=utf-8')
  t.is(res.headers['accept-ranges'], 'bytes')
  t.regex(res.headers.etag, /^"[0-9a-f]+-[0-9a-f]+"$/)
  t.truthy(Date.parse(res.headers['last-modified']))
  t.is(res.headers['content-disposition'], 'inline; filename="digits.txt"')
  t.is(res.headers['x-content-type-options'], 'nosniff')
})

filesTest('content types by extension, nested paths, empty file', async (t) => {
  const html = await request(`${t.context.base}/page.html`)
  t.is(html.headers['content-type'], 'text/html; charset=utf-8')
  const json = await request(`${t.context.base}/nested/deep/data.json`)
  t.is(json.status, 200)
  t.is(json.headers['content-type'], 'application/json')
  t.is(json.body.toString(), '{"a":1}')
  const empty = await request(`${t.context.base}/empty.bin`)
  t.is(empty.status, 200)
  t.is(empty.headers['content-length'], '0')
  t.is(empty.body.length, 0)
})

filesTest('HEAD sends the headers and no body', async (t) => {
  const res = await request(`${t.context.base}/digits.txt`, { method: 'HEAD' })
  t.is(res.status, 200)
  t.is(res.headers['content-length'], '1000')
  t.is(res.body.length, 0)
})

filesTest('other methods get 405 with Allow', async (t) => {
  const res = await request(`${t.context.base}/digits.txt`, { method: 'DELETE' })
  t.is(res.status, 405)
  t.is(res.headers.allow, 'GET, HEAD')
})

filesTest('non-ASCII names get an RFC 6266 filename*', async (t) => {
  const res = await request(`${t.context.base}/${encodeURIComponent('résumé €.pdf')}`)
  t.is(res.status, 200)
  t.regex(res.headers['content-disposition'], /^inline; filename="[^"]*"; filename\*=UTF-8''r%C3%A9sum%C3%A9%20%E2%82%AC\.pdf$/)
})

filesTest('attachment disposition', async (t) => {
  const { base } = await startFiles(t, { root: t.context.root, files: { disposition: 'attachment' } })
  const res = await request(`${base}/digits.txt`)
  t.is(res.headers['content-disposition'], 'attachment; filename="digits.txt"')
})

filesTest('If-None-Match and If-Modified-Since give 304', async (t) => {
  const first = await request(`${t.context.base}/digits.txt`)
  const etag = first.headers.etag
  const byTag = await request(`${t.context.base}/digits.txt`, { headers: { 'if-none-match': etag } })
  t.is(byTag.status, 304)
  t.is(byTag.body.length, 0)
  t.is(byTag.headers.etag, etag)
  const listed = await request(`${t.context.base}/digits.txt`, { headers: { 'if-none-match': `"nope", W/${etag}` } })
  t.is(listed.status, 304, 'weak comparison for If-None-Match')
  const other = await request(`${t.context.base}/digits.txt`, { headers: { 'if-none-match': '"other"' } })
  t.is(other.status, 200)
  const byDate = await request(`${t.context.base}/digits.txt`, {
    headers: { 'if-modified-since': first.headers['last-modified'] },
  })
  t.is(byDate.status, 304)
  const older = await request(`${t.context.base}/digits.txt`, {
    headers: { 'if-modified-since': 'Mon, 01 Jan 2001 00:00:00 GMT' },
  })
  t.is(older.status, 200)
  const tagWins = await request(`${t.context.base}/digits.txt`, {
    headers: { 'if-none-match': '"other"', 'if-modified-since': first.headers['last-modified'] },
  })
  t.is(tagWins.status, 200, 'If-None-Match decides when both are sent')
})

const range = (t, value, extra = {}) =>
  request(`${t.context.base}/digits.txt`, { headers: { range: value, ...extra } })

filesTest('single ranges: plain, open-ended, suffix, past the end', async (t) => {
  const plain = await range(t, 'bytes=10-19')
  t.is(plain.status, 206)
  t.is(plain.headers['content-range'], 'bytes 10-19/1000')
  t.is(plain.headers['content-length'], '10')
  t.deepEqual(plain.body, DIGITS.subarray(10, 20))

  const open = await range(t, 'bytes=990-')
  t.is(open.headers['content-range'], 'bytes 990-999/1000')
  t.deepEqual(open.body, DIGITS.subarray(990))

  const suffix = await range(t, 'bytes=-5')
  t.is(suffix.headers['content-range'], 'bytes 995-999/1000')
  t.deepEqual(suffix.body, DIGITS.subarray(995))

  const longSuffix = await range(t, 'bytes=-5000')
  t.is(longSuffix.status, 206)
  t.is(longSuffix.headers['content-range'], 'bytes 0-999/1000')
  t.is(longSuffix.body.length, 1000)

  const pastEnd = await range(t, 'bytes=995-5000')
  t.is(pastEnd.headers['content-range'], 'bytes 995-999/1000')
  t.is(pastEnd.body.length, 5)
})

filesTest('unsatisfiable ranges give 416 with Content-Range */len', async (t) => {
  for (const value of ['bytes=1000-', 'bytes=5000-6000', 'bytes=-0']) {
    const res = await range(t, value)
    t.is(res.status, 416, value)
    t.is(res.headers['content-range'], 'bytes */1000', value)
  }
  const stats = t.context.server.stats()
  t.is(stats.rejections.range_not_satisfiable, 3)
})

filesTest('malformed ranges are ignored (200, whole file)', async (t) => {
  for (const value of ['bytes=abc', 'bytes=5-1', 'items=0-1']) {
    const res = await range(t, value)
    t.is(res.status, 200, value)
    t.is(res.body.length, 1000)
  }
})

function parseMultipart(res) {
  const boundary = /boundary=(\S+)/.exec(res.headers['content-type'])[1]
  const text = res.body.toString('latin1')
  const parts = text.split(`--${boundary}`).slice(1, -1)
  return parts.map((part) => {
    const [head, body] = part.replace(/^\r\n/, '').split('\r\n\r\n')
    return { range: /Content-Range: (.*)/i.exec(head)[1].trim(), body: body.replace(/\r\n$/, '') }
  })
}

filesTest('multiple ranges: multipart/byteranges, overlaps coalesced, exact length', async (t) => {
  const res = await range(t, 'bytes=0-4, 20-24,2-7, 100-')
  t.is(res.status, 206)
  t.regex(res.headers['content-type'], /^multipart\/byteranges; boundary=/)
  t.is(Number(res.headers['content-length']), res.body.length)
  const parts = parseMultipart(res)
  t.deepEqual(
    parts.map((p) => p.range),
    ['bytes 0-7/1000', 'bytes 20-24/1000', 'bytes 100-999/1000'],
  )
  t.is(parts[0].body, DIGITS.subarray(0, 8).toString())
  t.is(parts[2].body.length, 900)
})

filesTest('at most 16 ranges: 16 are honoured, 17 are ignored', async (t) => {
  const list = (n) => 'bytes=' + Array.from({ length: n }, (_, i) => `${i * 50}-${i * 50 + 1}`).join(',')
  const sixteen = await range(t, list(16))
  t.is(sixteen.status, 206)
  t.is(parseMultipart(sixteen).length, 16)
  const seventeen = await range(t, list(17))
  t.is(seventeen.status, 200)
  t.is(seventeen.body.length, 1000)
})

filesTest('If-Range: ranges only while the validator matches', async (t) => {
  const { headers } = await request(`${t.context.base}/digits.txt`)
  const current = await range(t, 'bytes=0-1', { 'if-range': headers.etag })
  t.is(current.status, 206)
  const stale = await range(t, 'bytes=0-1', { 'if-range': '"stale"' })
  t.is(stale.status, 200)
  t.is(stale.body.length, 1000)
  const byDate = await range(t, 'bytes=0-1', { 'if-range': headers['last-modified'] })
  t.is(byDate.status, 206)
})

const TRAVERSALS = [
  '/../../../../etc/passwd',
  '/%2e%2e/%2e%2e/%2e%2e/etc/passwd',
  '/%2E%2e/%2E%2E/etc/passwd',
  '/..%2f..%2f..%2fetc%2fpasswd',
  '/nested/%2e%2e/%2e%2e/%2e%2e/etc/passwd',
  '/..%5c..%5c..%5cetc%5cpasswd',
  '/..\\..\\..\\etc\\passwd',
  '/digits.txt%00.html',
  '//etc/passwd',
  '/.env',
  '/.git/config',
  '/%2eenv',
  '/nested',
  '/missing.txt',
  '/%zz',
  '/%ff',
]

filesTest('path traversal, NUL, dotfiles, folders and bad encodings all give 404', async (t) => {
  for (const path of TRAVERSALS) {
    const raw = await rawExchange(
      t.context.port,
      `GET /stream/files${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
    )
    t.regex(raw, /^HTTP\/1\.1 (404|400) /, path)
    t.notRegex(raw, /root:|SECRET|\[core\]/, path)
  }
})

filesTest('curl --path-as-is traversal gets 404', async (t) => {
  const res = await curl(['-s', '--path-as-is', '-o', '/dev/null', '-w', '%{http_code}', `${t.context.base}/../../../etc/passwd`])
  t.is(res.stdout.toString(), '404')
}, needs(curlTool, test))

filesTest('a symlink escaping the root is not followed; one inside is', async (t) => {
  symlinkSync('/etc/passwd', join(t.context.root, 'escape'))
  symlinkSync(join(t.context.root, 'digits.txt'), join(t.context.root, 'alias.txt'))
  t.is((await request(`${t.context.base}/escape`)).status, 404)
  const inside = await request(`${t.context.base}/alias.txt`)
  t.is(inside.status, 200)
  t.deepEqual(inside.body, DIGITS)
})

filesTest('paths outside any mount get 404 and are counted', async (t) => {
  const res = await request(`${t.context.url}/nowhere`)
  t.is(res.status, 404)
  t.true(t.context.server.stats().rejections.not_found >= 1)
})

needs(curlTool, test)('serving a 1 GiB file keeps the server process memory flat (RSS growth < 16 MiB)', async (t) => {
  const { openSync, writeSync, closeSync } = await import('node:fs')
  const dir = fixture()
  t.teardown(dir.cleanup)
  const fd = openSync(join(dir.root, 'huge.bin'), 'w')
  const block = Buffer.alloc(1024 * 1024, 1)
  for (let i = 0; i < 1024; i++) writeSync(fd, block)
  closeSync(fd)
  const { port, rss } = await serverProcess(
    t,
    `const { Server, StreamingApp } = floodgate
    const server = new Server()
    const app = new StreamingApp({ rateLimitBandwidth: 0, rateLimitRequests: 0 })
    app.files('/', { root: ${JSON.stringify(dir.root)} })
    server.mount('/', app)
    server.listen({ port: 0 }).then(({ port }) => console.log('READY ' + port))`,
  )
  const before = rss()
  let peak = before
  const sampler = setInterval(() => (peak = Math.max(peak, rss())), 20)
  const result = await curl(['-s', '-o', '/dev/null', '-w', '%{size_download}', `http://127.0.0.1:${port}/huge.bin`])
  clearInterval(sampler)
  t.is(result.stdout.toString(), String(1024 * 1024 * 1024))
  const growth = (peak - before) / 2 ** 20
  t.log(`server RSS growth while serving 1 GiB: ${growth.toFixed(1)} MiB`)
  t.true(growth < 16, `server RSS grew ${growth.toFixed(1)} MiB`)
})
