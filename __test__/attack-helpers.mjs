// Shared by the attack tests (__test__/attack-*.test.mjs) and `npm run soak`: a server in its
// own process (tools/attack_server.cjs), its memory and open file descriptors sampled from
// outside, legitimate traffic beside an attack, and the slow-client tools.
import { spawn, execFile } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import http from 'node:http'
import { findTool, readyPort, sleep, eventually, wsFrame } from './helpers.mjs'

export const MiB = 1024 * 1024

/** Debian's slowhttptest: slowloris (-H) and slow read (-X) from a real attack tool. */
export const slowhttptestTool = findTool({
  name: 'slowhttptest',
  env: ['FLOODGATE_SLOWHTTPTEST'],
  names: ['slowhttptest'],
  install: 'apt-get install slowhttptest, or set FLOODGATE_SLOWHTTPTEST to a slowhttptest binary',
})

/** The address /stats is asked from: none of the attacks use it, so no per-IP cap refuses it. */
export const STATS_ADDRESS = '127.0.0.254'

/** Open file descriptors of process `pid` (Linux /proc). */
export const openFds = (pid) => readdirSync(`/proc/${pid}/fd`).length
/** Resident set size of process `pid` in bytes (Linux /proc). */
export const residentSet = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024

/**
 * Starts tools/attack_server.cjs with `config` ({ server, streaming, root, uploads, sse }).
 * Resolves { port, url, pid, rss(), fds(), stats(), stderr(), stop() }; `stats()` asks the server's /stats
 * route (server.stats(), its own fd count) from STATS_ADDRESS. With `t`, killed at teardown.
 */
export async function attackServer(t, config = {}) {
  const script = fileURLToPath(new URL('./tools/attack_server.cjs', import.meta.url))
  const child = spawn(process.execPath, [script, JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'pipe'] })
  // Its stderr (the `error` events of handlers the attacks made fail) is kept, not printed.
  let stderr = ''
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-20_000)))
  const stop = () => child.exitCode === null && child.signalCode === null && child.kill('SIGKILL')
  t?.teardown(stop)
  const port = await readyPort(child, () => stderr)
  const url = `http://127.0.0.1:${port}`
  const server = {
    port,
    url,
    pid: child.pid,
    child,
    stop,
    alive: () => child.exitCode === null && child.signalCode === null,
    stderr: () => stderr,
    rss: () => residentSet(child.pid),
    fds: () => openFds(child.pid),
    stats: async () => JSON.parse((await get(`${url}/stats`, { localAddress: STATS_ADDRESS, timeout: 10_000 })).body.toString()),
  }
  // Warm up what is made on first use (the JS bridge, a files read, the stats route itself).
  await get(`${url}/api/warm`, { localAddress: STATS_ADDRESS })
  if (config.root) await get(`${url}/stream/files/small.txt`, { localAddress: STATS_ADDRESS })
  await server.stats()
  return server
}

/** A GET (or `method`) with its own connection; resolves { status, headers, body, ms }. */
export function get(url, { method = 'GET', headers = {}, localAddress, timeout = 15_000, body } = {}) {
  const started = performance.now()
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, localAddress, agent: false, timeout }, (res) => {
      const chunks = []
      res.on('data', (chunk) => chunks.push(chunk))
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks), ms: performance.now() - started }))
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new Error(`${method} ${url} took over ${timeout} ms`)))
    req.on('error', reject)
    req.end(body)
  })
}

/**
 * Samples the server's RSS and open fds every `interval` ms until stop() (or the end of test
 * `t`); stop() returns { peakRss, peakFds, samples }.
 */
export function sampler(server, { interval = 200, t } = {}) {
  const samples = []
  const take = () => {
    try {
      samples.push({ at: Date.now(), rss: server.rss(), fds: server.fds() })
    } catch {
      // the process is gone: the test's own checks say so
    }
  }
  take()
  const timer = setInterval(take, interval)
  timer.unref()
  t?.teardown(() => clearInterval(timer))
  return {
    samples,
    stop() {
      clearInterval(timer)
      take()
      return {
        samples,
        peakRss: Math.max(...samples.map((s) => s.rss)),
        peakFds: Math.max(...samples.map((s) => s.fds)),
      }
    },
  }
}

/** A baseline of the quiet server: { rss, fds, stats }. */
export async function baseline(server) {
  await sleep(100)
  return { rss: server.rss(), fds: server.fds(), stats: (await server.stats()).stats }
}

const mib = (bytes) => `${(bytes / MiB).toFixed(1)} MiB`

/**
 * The checks every attack test ends with: the server is alive; RSS during the attack stayed
 * under base + `rssBound`; open fds come back to within `fdMargin` of the baseline (and live
 * connections to the baseline's) within `timeout` ms after the attack. Returns the figures.
 */
export async function assertRecovered(t, server, base, watch, { rssBound = 256 * MiB, fdMargin = 8, timeout = 15_000 } = {}) {
  const { peakRss, peakFds } = watch.stop()
  t.true(server.alive(), 'the server process is still running')
  t.true(peakRss - base.rss < rssBound, `RSS grew ${mib(peakRss - base.rss)} during the attack (${mib(base.rss)} → peak ${mib(peakRss)}; bound ${mib(rssBound)})`)
  const fdsBack = await eventually(() => server.fds() <= base.fds + fdMargin, { timeout, interval: 100 })
  const fdsAfter = server.fds()
  t.truthy(fdsBack, `open fds: ${base.fds} before, peak ${peakFds}, ${fdsAfter} ${timeout / 1000} s after the attack (margin ${fdMargin})`)
  const stats = await eventually(async () => {
    const s = (await server.stats()).stats
    return s.connectionsLive <= base.stats.connectionsLive + 1 ? s : undefined
  }, { timeout: 5_000, interval: 100 })
  t.truthy(stats, 'live connections back to the baseline after the attack')
  const figures = { rssBase: mib(base.rss), rssPeak: mib(peakRss), rssAfter: mib(server.rss()), fdsBase: base.fds, fdsPeak: peakFds, fdsAfter }
  t.log(`RSS ${figures.rssBase} → peak ${figures.rssPeak} → ${figures.rssAfter}; fds ${base.fds} → peak ${peakFds} → ${fdsAfter}`)
  return figures
}

/**
 * Legitimate traffic beside an attack: one request at a time to `path` from `localAddress`
 * (a fresh connection each, as a new visitor), every `interval` ms until stop(). stop()
 * resolves { count, failures: [..], p50, p99, max } (latencies in ms). Stopped at the end of
 * test `t` in any case.
 */
export function legitimate(server, { path = '/stream/files/small.txt', localAddress = '127.0.0.250', interval = 50, expect = 200, t } = {}) {
  const latencies = []
  const failures = []
  let running = true
  t?.teardown(() => (running = false))
  const loop = (async () => {
    while (running) {
      try {
        const res = await get(`${server.url}${path}`, { localAddress, timeout: 10_000 })
        if (res.status === expect) latencies.push(res.ms)
        else failures.push(`status ${res.status}`)
      } catch (error) {
        failures.push(error.message)
      }
      await sleep(interval)
    }
  })()
  return {
    async stop() {
      running = false
      await loop
      const sorted = [...latencies].sort((a, b) => a - b)
      const pick = (q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : NaN)
      return { count: sorted.length, failures, p50: pick(0.5), p99: pick(0.99), max: sorted.at(-1) ?? NaN }
    },
  }
}

/** Runs a tool; resolves { code, stdout, stderr } (never rejects; a timeout kills it). */
export function runTool(path, args, { timeout = 60_000 } = {}) {
  return new Promise((resolve) => {
    execFile(path, args, { timeout, maxBuffer: 16 * MiB }, (error, stdout, stderr) =>
      resolve({ code: error ? (error.code ?? error.signal ?? 1) : 0, stdout, stderr }),
    )
  })
}

/**
 * slowhttptest's -g CSV (seconds, closed, pending, connected, service available) as rows of
 * numbers: { seconds, closed, pending, connected, available }.
 */
export function slowhttptestCsv(path) {
  return readFileSync(path, 'utf8')
    .trim()
    .split('\n')
    .slice(1)
    .map((line) => line.split(','))
    .map(([seconds, closed, pending, connected, available]) => ({
      seconds: Number(seconds),
      closed: Number(closed),
      pending: Number(pending),
      connected: Number(connected),
      available: Number(available),
    }))
}

// ---- Attack payloads, shared by the tests and the soak run ----

/** Malformed and smuggling HTTP/1.1 requests, each followed by a pipelined request that must never be answered. */
/** The request pipelined behind each malformed one: its answer (`api:/smuggled`) must never appear. */
export const SMUGGLED = 'GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n'
/** A Content-Length that would swallow exactly the request behind (a desync, answered by the handler). */
export const L = SMUGGLED.length

export const MALFORMED = {
  // To a JS handler (/api reads the body), then to an upload route (Rust reads the body).
  'conflicting Content-Length twice': `POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: ${L}\r\n\r\nhello${SMUGGLED}`,
  'conflicting Content-Length list': `POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, ${L}\r\n\r\nhello${SMUGGLED}`,
  'negative Content-Length': `POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n${SMUGGLED}`,
  'Content-Length with a sign': `POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello${SMUGGLED}`,
  'Content-Length not a number': `POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nhello${SMUGGLED}`,
  'Content-Length overflowing 64 bits': `POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n${SMUGGLED}`,
  'space before the colon': `POST /api/a HTTP/1.1\r\nHost: x\r\nContent-Length : ${L}\r\n\r\n${SMUGGLED}`,
  'chunk size not hex': `POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n${SMUGGLED}`,
  'chunk size overflowing 64 bits': `POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\nhello\r\n0\r\n\r\n${SMUGGLED}`,
  'negative chunk size': `POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n${SMUGGLED}`,
  'chunk longer than its size': `POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n${SMUGGLED}`,
  'chunk extension of 64 KiB': `POST /api/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;${'a'.repeat(64 * 1024)}\r\nhello\r\n0\r\n\r\n${SMUGGLED}`,
  'upload: chunk size not hex': `PUT /stream/up/bad.bin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n${SMUGGLED}`,
  'upload: chunk longer than its size': `PUT /stream/up/bad.bin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n${SMUGGLED}`,
  'upload: conflicting Content-Length': `PUT /stream/up/bad.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: ${L}\r\n\r\nhello${SMUGGLED}`,
  'obs-fold continuation line': `GET /api/a HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n${SMUGGLED}`,
  'obs-fold hiding a Content-Length': `POST /api/a HTTP/1.1\r\nHost: x\r\nX-A: b\r\n Content-Length: ${L}\r\n\r\n${SMUGGLED}`,
  'NUL in a header value': `GET /api/a HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\n\r\n${SMUGGLED}`,
  'NUL in a header name': `GET /api/a HTTP/1.1\r\nHost: x\r\nX-N\0ul: a\r\n\r\n${SMUGGLED}`,
  'header line without a colon': `GET /api/a HTTP/1.1\r\nHost: x\r\nContent-Length ${L}\r\n\r\n${SMUGGLED}`,
  'request line of 64 KiB': `GET /api/${'a'.repeat(64 * 1024)} HTTP/1.1\r\nHost: x\r\n\r\n${SMUGGLED}`,
  'bare LF hiding a Content-Length in a header value': `POST /api/a HTTP/1.1\r\nHost: x\r\nX-A: b\nContent-Length: ${L}\r\n\r\n${SMUGGLED}`,
  'bare CR in a header': `GET /api/a HTTP/1.1\r\nHost: x\r\nX-A: b\rContent-Length: ${L}\r\n\r\n${SMUGGLED}`,
  'absolute-form naming another host': `GET http://evil.example/api/a HTTP/1.1\r\nHost: x\r\n\r\n${SMUGGLED}`,
  'unknown HTTP version': `GET /api/a HTTP/1.7\r\nHost: x\r\n\r\n${SMUGGLED}`,
  'method with a separator': `G(T /api/a HTTP/1.1\r\nHost: x\r\n\r\n${SMUGGLED}`,
  'two spaces in the request line': `GET  /api/a HTTP/1.1\r\nHost: x\r\n\r\n${SMUGGLED}`,
}

/** Path traversal probes, relative to a files mount whose root has a sibling secret.txt. */
export const TRAVERSAL = [
  '../secret.txt',
  '..%2fsecret.txt',
  '..%2Fsecret.txt',
  '%2e%2e/secret.txt',
  '%2e%2e%2fsecret.txt',
  '%2E%2E%2Fsecret.txt',
  '.%2e/secret.txt',
  '%2e./secret.txt',
  '..%5csecret.txt',
  '..\\secret.txt',
  '%252e%252e%252fsecret.txt',
  '..%252fsecret.txt',
  '..%255csecret.txt',
  '....//secret.txt',
  '..;/secret.txt',
  '%c0%ae%c0%ae/secret.txt',
  '%c0%ae%c0%ae%c0%afsecret.txt',
  '%e0%80%ae%e0%80%ae/secret.txt',
  '..%c0%afsecret.txt',
  '..%ef%bc%8fsecret.txt',
  '..%u2216secret.txt',
  '%%32%65%%32%65/secret.txt',
  'sub/../../secret.txt',
  'sub/%2e%2e/%2e%2e/secret.txt',
  'sub/..%2f..%2fsecret.txt',
  './../secret.txt',
  '..%00/secret.txt',
  '%00../secret.txt',
  'small.txt%00.png',
  '..%2f..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd',
  '../../../../../../../../etc/passwd',
  '%2fetc%2fpasswd',
  '/etc/passwd',
  'file:%2f%2f%2fetc%2fpasswd',
  'C:%5cWindows%5cwin.ini',
  '.env',
  '%2eenv',
  'sub/..%2f.env',
  'sub/%2e%2e/.env',
]

const u16 = (n) => {
  const b = Buffer.alloc(2)
  b.writeUInt16BE(n)
  return b
}
/** A frame with reserved bits set in its first byte. */
const withBits = (frame, bits) => {
  const copy = Buffer.from(frame)
  copy[0] |= bits
  return copy
}
/** A masked binary frame header declaring 2^62 bytes, and nothing after it. */
const hugeHeader = () => {
  const head = Buffer.alloc(14)
  head[0] = 0x82
  head[1] = 0x80 | 127
  head.writeBigUInt64BE(2n ** 62n, 2)
  return head
}

/** WebSocket protocol violations: [name, () => bytes, the close code expected]. */
export const VIOLATIONS = [
  ['text that is not UTF-8', () => wsFrame(0x1, Buffer.from([0x68, 0xff, 0xfe])), 1007],
  ['text not UTF-8 across fragments', () => Buffer.concat([wsFrame(0x1, Buffer.from([0xe2, 0x82]), { fin: false }), wsFrame(0x0, Buffer.from([0x28]))]), 1007],
  ['an unmasked frame', () => Buffer.from([0x81, 0x02, 0x68, 0x69]), 1002],
  ['RSV1 without an extension', () => withBits(wsFrame(0x1, 'x'), 0x40), 1002],
  ['RSV2 and RSV3', () => withBits(wsFrame(0x2, 'x'), 0x30), 1002],
  ['reserved data opcode 0x3', () => wsFrame(0x3, 'x'), 1002],
  ['reserved control opcode 0xB', () => wsFrame(0xb, 'x'), 1002],
  ['a fragmented ping', () => wsFrame(0x9, 'x', { fin: false }), 1002],
  ['a ping of 126 bytes', () => wsFrame(0x9, Buffer.alloc(126)), 1002],
  ['a continuation with nothing to continue', () => wsFrame(0x0, 'x'), 1002],
  ['a new message inside a fragmented one', () => Buffer.concat([wsFrame(0x1, 'a', { fin: false }), wsFrame(0x1, 'b')]), 1002],
  ['close code 999', () => wsFrame(0x8, u16(999)), 1002],
  ['close code 1005 (never sent on the wire)', () => wsFrame(0x8, u16(1005)), 1002],
  ['a close payload of one byte', () => wsFrame(0x8, Buffer.from([3])), 1002],
  ['a close reason that is not UTF-8', () => wsFrame(0x8, Buffer.concat([u16(1000), Buffer.from([0xff])])), 1007],
  ['a frame header declaring 2^62 bytes', hugeHeader, 1009],
  ['a message of 2 MiB (wsMaxMessageSize 1 MiB)', () => wsFrame(0x2, Buffer.alloc(2 * MiB)), 1009],
]
