// Attacks in the requests themselves, each against a server in its own process whose memory and
// open file descriptors are sampled before, during and after: range abuse, malformed and
// smuggling requests, path traversal, uploads aborted mid-body.
import test from 'ava'
import net from 'node:net'
import { readdirSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { fixture, rawExchange, eventually } from './helpers.mjs'
import { MiB, attackServer, baseline, sampler, assertRecovered, get, MALFORMED, TRAVERSAL } from './attack-helpers.mjs'

const SIZE = MiB
const dir = fixture({
  'secret.txt': 'TOPSECRET outside the root\n',
  'www/small.txt': 'hello\n',
  'www/range.bin': Buffer.alloc(SIZE, 5),
  'www/.env': 'DOTSECRET\n',
  'www/sub/inner.txt': 'inner\n',
})
test.after.always(() => dir.cleanup())
const root = join(dir.root, 'www')

/** The status of the first response in a raw answer, or 0 when the server answered nothing. */
const statusOf = (answer) => Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 0)

test('range abuse: hundreds of overlapping ranges are coalesced or ignored, never amplified (bytes ≤ file size + framing)', async (t) => {
  const server = await attackServer(t, { root })
  const base = await baseline(server)
  const watch = sampler(server, { t })
  const many = (n, f) => Array.from({ length: n }, (_, i) => f(i)).join(',')
  const patterns = {
    '500 × 0-': many(500, () => '0-'),
    '300 overlapping i·1000-end': many(300, (i) => `${i * 1000}-${SIZE - 1}`),
    '300 × suffix -SIZE': many(300, () => `-${SIZE}`),
    '16 × whole file (coalesced)': many(16, () => `0-${SIZE - 1}`),
    '16 disjoint (multipart)': many(16, (i) => `${i * (SIZE / 16)}-${(i + 1) * (SIZE / 16) - 1}`),
    '1,000 × 0-0': many(1000, () => '0-0'),
    '200 single bytes apart': many(200, (i) => `${i * 2}-${i * 2}`),
    'unsorted overlapping': many(100, (i) => `${(i * 7919) % SIZE}-${Math.min(SIZE - 1, ((i * 7919) % SIZE) + 300_000)}`),
    '6,000 × 0-0 (head over maxHeaderSize)': many(6000, () => '0-0'),
  }
  const framing = 16 * 1024 // response head, multipart boundaries and part heads
  const results = {}
  // Ten of each at once: amplification would show as ten times whatever one costs.
  await Promise.all(
    Object.entries(patterns).flatMap(([name, range]) =>
      Array.from({ length: 10 }, async () => {
        const answer = await rawExchange(server.port, `GET /stream/files/range.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=${range}\r\nConnection: close\r\n\r\n`)
        const entry = (results[name] ??= { statuses: new Set(), most: 0 })
        entry.statuses.add(statusOf(answer))
        entry.most = Math.max(entry.most, answer.length)
      }),
    ),
  )
  const problems = []
  for (const [name, { statuses, most }] of Object.entries(results)) {
    t.log(`${name}: ${[...statuses].join('/')}, ${most} bytes at most`)
    if (most > SIZE + framing) problems.push(`${name}: a response of ${most} bytes for a ${SIZE}-byte file`)
    if (![...statuses].every((s) => [200, 206, 416, 431].includes(s))) problems.push(`${name}: answered ${[...statuses]}`)
  }
  t.deepEqual(problems, [], 'no range request amplified')
  t.deepEqual([...results['6,000 × 0-0 (head over maxHeaderSize)'].statuses], [431])
  t.deepEqual([...results['500 × 0-'].statuses], [200], 'more than 16 ranges are ignored: the whole file once')
  t.deepEqual([...results['16 × whole file (coalesced)'].statuses], [206], '16 overlapping ranges are coalesced into one')
  const sent = (await server.stats()).stats.bytesSent - base.stats.bytesSent
  const requests = Object.keys(patterns).length * 10
  t.true(sent <= requests * (SIZE + framing), `${sent} bytes sent for ${requests} range requests on a ${SIZE}-byte file`)
  await assertRecovered(t, server, base, watch)
})


/** What a wrong answer means, for the failure message. */
const WHY = {
  500: (name) =>
    /chunk/.test(name) && !name.startsWith('upload')
      ? ' — the JS handler’s body read failed (ERR_FLOODGATE_BODY_ABORTED) and became a 500; a malformed body is the client’s error: 400, as an upload route answers'
      : '',
  200: (name) =>
    /bare LF/.test(name)
      ? ' — a bare LF ended the header line, so the Content-Length hidden in X-A’s value was obeyed and swallowed the request behind it as a body (a front end that ends lines only at CRLF forwards both: a desync)'
      : /absolute-form/.test(name)
        ? ' — served as a request to Host: x (the handler sees http://x/a), the authority evil.example silently dropped: neither refused nor taken as the host (RFC 9112 3.2.2 says a server must use it)'
        : '',
}

test(`malformed and smuggling requests (${Object.keys(MALFORMED).length}): each answered 4xx or closed, the request behind it never answered`, async (t) => {
  const uploads = join(dir.root, 'malformed-uploads')
  mkdirSync(uploads)
  const server = await attackServer(t, { root, uploads })
  const base = await baseline(server)
  const watch = sampler(server, { t })
  const outcomes = await Promise.all(
    Object.entries(MALFORMED).map(async ([name, payload], i) => {
      const answer = await rawExchange(server.port, payload, { localAddress: `127.0.0.${2 + (i % 30)}`, timeout: 15_000 })
      return { name, status: statusOf(answer), smuggled: answer.includes('api:/smuggled'), answered: answer.includes('api:/'), head: answer.split('\r\n')[0] }
    }),
  )
  const problems = []
  for (const { name, status, smuggled, answered, head } of outcomes) {
    t.log(`${name}: ${status ? head : 'closed without an answer'}`)
    // After a refusal nothing more may be read from the connection (a request answered 200 is
    // a problem of its own, and a request pipelined behind a valid one is answered rightly).
    if (smuggled && status >= 400) problems.push(`${name}: answered ${status}, then the request pipelined behind it was answered too (smuggled)`)
    if (!(status === 0 || (status >= 400 && status < 500))) problems.push(`${name}: answered ${JSON.stringify(head)}${answered ? ' by the handler' : ''}, not 4xx or a close${WHY[status] && WHY[status](name)}`)
  }
  t.deepEqual(problems, [], 'every malformed request answered 4xx or closed, nothing smuggled')
  t.deepEqual(readdirSync(uploads), [], 'no upload stored from a malformed body')
  // The server goes on serving.
  t.is((await get(`${server.url}/api/after`)).body.toString(), 'api:/after')
  await assertRecovered(t, server, base, watch)
})


const TRAVERSAL_TARGETS = [
  ...TRAVERSAL.map((probe) => `/stream/files/${probe}`),
  '/stream/files/../../secret.txt',
  '/stream/../stream/files/../secret.txt',
  '/stream/files/%2e%2e/%2e%2e/%2e%2e/etc/passwd',
]

test(`path traversal probes (${TRAVERSAL_TARGETS.length} encodings): all 404 or 400, nothing outside the root or hidden served`, async (t) => {
  const server = await attackServer(t, { root })
  const base = await baseline(server)
  const watch = sampler(server, { t })
  const targets = TRAVERSAL_TARGETS
  const answers = await Promise.all(
    targets.map(async (target) => ({ target, answer: await rawExchange(server.port, `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`) })),
  )
  const problems = []
  for (const { target, answer } of answers) {
    const status = statusOf(answer)
    if (status !== 404 && status !== 400) problems.push(`${target}: answered ${JSON.stringify(answer.split('\r\n')[0])}`)
    if (/TOPSECRET|DOTSECRET|root:x:|\[fonts\]/.test(answer)) problems.push(`${target}: served something outside the root or hidden`)
  }
  t.deepEqual(problems, [], 'every probe 404 or 400, nothing served')
  t.is((await get(`${server.url}/stream/files/small.txt`)).body.toString(), 'hello\n', 'a file inside the root is served')
  await assertRecovered(t, server, base, watch)
})

test('uploads aborted mid-body (reset, half-close, stalled past readTimeout): no temp file left, no partial file', async (t) => {
  const uploads = join(dir.root, 'incoming')
  mkdirSync(uploads)
  const server = await attackServer(t, { streaming: { readTimeout: '2s' }, uploads })
  const base = await baseline(server)
  const watch = sampler(server, { t })
  const temps = () => readdirSync(uploads).filter((name) => name.startsWith('.'))
  const sockets = await Promise.all(
    Array.from({ length: 21 }, (_, i) =>
      new Promise((resolve) => {
        const socket = net.connect({ port: server.port, host: '127.0.0.1', localAddress: `127.0.0.${2 + i}` }, () => {
          socket.write(`PUT /stream/up/abort-${i}.bin HTTP/1.1\r\nHost: x\r\nContent-Length: ${4 * MiB}\r\n\r\n`)
          socket.write(Buffer.alloc(512 * 1024, i))
          resolve(socket)
        })
        socket.on('error', () => {})
        socket.resume()
      }),
    ),
  )
  const started = await eventually(() => temps().length === 21, { timeout: 10_000 })
  t.truthy(started, `${temps().length} of 21 uploads have a temporary file`)
  sockets.forEach((socket, i) => {
    if (i % 3 === 0) socket.resetAndDestroy() // RST
    else if (i % 3 === 1) socket.end() // FIN mid-body
    // i % 3 === 2: stalls, cut off at readTimeout
  })
  const cleaned = await eventually(() => temps().length === 0, { timeout: 10_000, interval: 100 })
  t.truthy(cleaned, `temporary files left: ${temps().join(', ')}`)
  t.deepEqual(readdirSync(uploads), [], 'no partial file appeared under its name')
  const stats = (await server.stats()).stats
  t.is(stats.rejections.read_timeout, 7, 'the stalled uploads got 408 at readTimeout')
  sockets.forEach((socket) => socket.destroy())
  await assertRecovered(t, server, base, watch)
})
