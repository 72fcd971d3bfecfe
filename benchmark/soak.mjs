// The soak run (`npm run soak [-- --minutes N]`): a server in its own process under mixed
// legitimate traffic and the attack suite's attacks in rotation, for 10 minutes by default.
// Every 30 s it prints the server's RSS, open fds, live connections and rejections; at the end a
// verdict: RSS and open fds flat (the quiet level at the end within a margin of the quiet level
// after warm-up). Not part of `npm test` or CI: a release should pass the 10-minute run.
//
// Legitimate clients bind 127.0.0.200–209, attacks 127.0.0.1–41, the stats reader 127.0.0.254
// (Linux answers on all of 127/8). Needs Linux (/proc); uses slowhttptest and a python3 with h2
// when installed (their attacks are skipped otherwise, and said so).
import net from 'node:net'
import { mkdtempSync, writeFileSync, mkdirSync, rmSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { fileURLToPath } from 'node:url'
import { execFile } from 'node:child_process'
import { pythonWith, rawExchange, rawWebSocket, closedWithin, sleep, WebSocketClient } from '../__test__/helpers.mjs'
import { MiB, attackServer, get, runTool, slowhttptestTool, MALFORMED, TRAVERSAL, VIOLATIONS } from '../__test__/attack-helpers.mjs'

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '10' },
    interval: { type: 'string', default: '30' },
    warmup: { type: 'string', default: '' },
  },
})
const minutes = Number(values.minutes)
const intervalMs = Number(values.interval) * 1000
const durationMs = minutes * 60_000
// Warm-up: a tenth of the run, at least 30 s (every attack has run once by then).
const warmupMs = values.warmup ? Number(values.warmup) * 1000 : Math.max(30_000, durationMs / 10)
if (!(minutes > 0) || warmupMs >= durationMs) {
  console.error('usage: node benchmark/soak.mjs [--minutes N] [--interval SECONDS] [--warmup SECONDS] (warm-up shorter than the run)')
  process.exit(2)
}

// ---- the server ----
const work = mkdtempSync(join(tmpdir(), 'floodgate-soak-'))
const root = join(work, 'www')
const uploads = join(work, 'incoming')
mkdirSync(root)
mkdirSync(uploads)
writeFileSync(join(root, 'small.txt'), 'hello\n')
writeFileSync(join(root, 'range.bin'), Buffer.alloc(MiB, 5))
writeFileSync(join(root, 'big.bin'), Buffer.alloc(16 * MiB, 3))
writeFileSync(join(work, 'secret.txt'), 'TOPSECRET\n')

const server = await attackServer(undefined, {
  root,
  uploads,
  server: { headerTimeout: '2s', keepAliveTimeout: '2s', maxConnectionsPerIp: 40, http2: true },
  streaming: { sendTimeout: '2s', downloadTimeout: '30s', readTimeout: '2s', sseMaxConnectionsPerUser: 4, wsMaxMessageSize: '1mb' },
})
const cleanup = () => {
  server.stop()
  rmSync(work, { recursive: true, force: true })
}
process.on('SIGINT', () => {
  cleanup()
  process.exit(130)
})

const started = Date.now()
const elapsed = () => ((Date.now() - started) / 1000).toFixed(0).padStart(4)
let running = true
const mib = (bytes) => `${(bytes / MiB).toFixed(1)} MiB`

// ---- legitimate traffic ----
const legit = { ok: 0, failed: 0, failures: new Map(), sseEvents: 0, wsEchoes: 0 }
const failed = (what) => {
  legit.failed++
  legit.failures.set(what, (legit.failures.get(what) ?? 0) + 1)
}
const LEGIT = (i) => `127.0.0.${200 + (i % 10)}`

async function legitLoop(i, step) {
  while (running) {
    try {
      if (await step(i)) legit.ok++
    } catch (error) {
      failed(error.message.slice(0, 80))
    }
    await sleep(20)
  }
}
const steps = {
  async download(i) {
    const res = await get(`${server.url}/stream/files/small.txt`, { localAddress: LEGIT(i) })
    return res.status === 200 || failed(`download ${res.status}`)
  },
  async range(i) {
    const from = Math.floor(Math.random() * (MiB - 70_000))
    const res = await get(`${server.url}/stream/files/range.bin`, { localAddress: LEGIT(i), headers: { range: `bytes=${from}-${from + 65_535}` } })
    return (res.status === 206 && res.body.length === 65_536) || failed(`range ${res.status} ${res.body.length}`)
  },
  async upload(i) {
    const res = await get(`${server.url}/stream/up/legit-${i}.bin`, { method: 'PUT', localAddress: LEGIT(i), body: Buffer.alloc(256 * 1024, i), headers: { 'content-length': 256 * 1024 } })
    return res.status === 201 || failed(`upload ${res.status}`)
  },
  async handler(i) {
    const a = await get(`${server.url}/stream/hello`, { localAddress: LEGIT(i) })
    const b = await get(`${server.url}/api/legit`, { localAddress: LEGIT(i), method: 'POST', body: 'x'.repeat(1000) })
    return (a.status === 200 && b.body.toString() === 'api:/legit') || failed(`handler ${a.status} ${b.status}`)
  },
}

// SSE subscribers (distinct users) and a publisher.
const subscribers = []
function subscribe(i) {
  if (!running) return
  const socket = net.connect({ port: server.port, host: '127.0.0.1', localAddress: LEGIT(i) })
  socket.on('connect', () => socket.write(`GET /stream/events?u=reader${i} HTTP/1.1\r\nHost: x\r\n\r\n`))
  socket.on('data', (chunk) => (legit.sseEvents += (chunk.toString().match(/\ndata: /g) ?? []).length))
  socket.on('error', () => {})
  socket.on('close', () => {
    if (running) {
      failed('sse stream closed')
      setTimeout(() => subscribe(i), 500)
    }
  })
  subscribers[i] = socket
}

// WebSocket echo clients.
const echoes = []
function echoClient(i) {
  if (!running) return
  const client = new WebSocketClient(`ws://127.0.0.1:${server.port}/stream/echo`, { perMessageDeflate: false, localAddress: LEGIT(i) })
  let timer
  client.on('open', () => (timer = setInterval(() => client.send(`ping ${Date.now()}`), 100)))
  client.on('message', () => legit.wsEchoes++)
  client.on('error', () => {})
  client.on('close', () => {
    clearInterval(timer)
    if (running) {
      failed('ws closed')
      setTimeout(() => echoClient(i), 500)
    }
  })
  echoes[i] = client
}

// ---- attacks, in rotation ----
const ATTACKER = (i) => `127.0.0.${2 + (i % 40)}`
const attacks = {
  async slowloris() {
    const sockets = Array.from({ length: 200 }, (_, i) => {
      const socket = net.connect({ port: server.port, host: '127.0.0.1', localAddress: ATTACKER(i) })
      socket.on('error', () => {})
      socket.on('connect', () => socket.write('GET /stream/files/small.txt HTTP/1.1\r\nHost: x\r\n'))
      const timer = setInterval(() => !socket.destroyed && socket.write('X-a: b\r\n'), 300)
      socket.on('close', () => clearInterval(timer))
      return socket
    })
    await sleep(4000)
    sockets.forEach((s) => s.destroy())
  },
  async slowhttptest() {
    if (slowhttptestTool.missing) return 'skipped: no slowhttptest'
    await runTool(slowhttptestTool.path, ['-H', '-c', '150', '-r', '150', '-i', '1', '-l', '5', '-p', '3', '-u', `${server.url}/stream/files/small.txt`], { timeout: 20_000 })
  },
  async exhaustion() {
    const sockets = Array.from({ length: 100 }, () => {
      const socket = net.connect({ port: server.port, host: '127.0.0.1', localAddress: '127.0.0.1' })
      socket.on('error', () => {})
      return socket
    })
    await sleep(1500)
    sockets.forEach((s) => s.destroy())
  },
  async slowRead() {
    const sockets = Array.from({ length: 20 }, (_, i) => {
      const socket = net.connect({ port: server.port, host: '127.0.0.1', localAddress: ATTACKER(i) })
      socket.on('error', () => {})
      socket.on('connect', () => {
        socket.write('GET /stream/files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n')
        socket.pause()
      })
      return socket
    })
    await sleep(5000)
    sockets.forEach((s) => s.destroy())
  },
  async ranges() {
    const range = Array.from({ length: 500 }, () => '0-').join(',')
    await Promise.all(
      Array.from({ length: 30 }, (_, i) =>
        rawExchange(server.port, `GET /stream/files/range.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=${range}\r\nConnection: close\r\n\r\n`, { localAddress: ATTACKER(i) }).catch(() => {}),
      ),
    )
  },
  async malformed() {
    await Promise.all(Object.values(MALFORMED).map((payload, i) => rawExchange(server.port, payload, { localAddress: ATTACKER(i) }).catch(() => {})))
  },
  async traversal() {
    await Promise.all(
      TRAVERSAL.map((probe, i) => rawExchange(server.port, `GET /stream/files/${probe} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`, { localAddress: ATTACKER(i) }).catch(() => {})),
    )
  },
  async uploadAborts() {
    const sockets = Array.from({ length: 20 }, (_, i) => {
      const socket = net.connect({ port: server.port, host: '127.0.0.1', localAddress: ATTACKER(i) })
      socket.on('error', () => {})
      socket.on('connect', () => {
        socket.write(`PUT /stream/up/abort-${i}.bin HTTP/1.1\r\nHost: x\r\nContent-Length: ${4 * MiB}\r\n\r\n`)
        socket.write(Buffer.alloc(256 * 1024, i))
      })
      return socket
    })
    await sleep(1000)
    sockets.forEach((s, i) => (i % 3 === 0 ? s.resetAndDestroy() : i % 3 === 1 ? s.end() : undefined)) // the rest stall to readTimeout
    await sleep(3000)
    sockets.forEach((s) => s.destroy())
  },
  async wsViolations() {
    await Promise.all(
      VIOLATIONS.map(async ([, bytes], i) => {
        const raw = await rawWebSocket(server.port, '/stream/echo', { localAddress: ATTACKER(i) })
        raw.socket.write(bytes())
        await closedWithin(raw, 10_000).catch(() => raw.socket.destroy())
      }),
    ).catch(() => {})
  },
  async sseHoard() {
    const sockets = Array.from({ length: 40 }, (_, i) => {
      const socket = net.connect({ port: server.port, host: '127.0.0.1', localAddress: ATTACKER(i) })
      socket.on('error', () => {})
      socket.on('connect', () => socket.write('GET /stream/events?u=mallory HTTP/1.1\r\nHost: x\r\n\r\n'))
      return socket
    })
    await sleep(2000)
    sockets.forEach((s) => s.destroy())
  },
  async rapidReset() {
    if (python.missing) return 'skipped: no python3 with h2'
    await h2Client(['rapid-reset', server.port, '/api/x', 0, 4])
  },
  async continuation() {
    if (python.missing) return 'skipped: no python3 with h2'
    await h2Client(['continuation', server.port, '/api/x', 1, 3])
    await h2Client(['continuation-empty', server.port, '/api/x', 1, 3])
  },
}
const python = pythonWith('h2', 'python3-h2')
const h2Script = fileURLToPath(new URL('../__test__/tools/h2_client.py', import.meta.url))
const h2Client = (args) => new Promise((resolve) => execFile(python.path, [h2Script, ...args.map(String)], { timeout: 30_000 }, () => resolve()))

const attackCounts = Object.fromEntries(Object.keys(attacks).map((name) => [name, 0]))
const skipped = new Set()
let paused = false
const attackLoop = async () => {
  for (let round = 0; running; round++) {
    for (const [name, attack] of Object.entries(attacks)) {
      while (paused && running) await sleep(100)
      if (!running) break
      const outcome = await attack().catch((error) => `failed: ${error.message}`)
      if (typeof outcome === 'string') skipped.add(`${name} (${outcome})`)
      else attackCounts[name]++
      await sleep(250)
    }
  }
}

// ---- reports ----
const rejectionsOf = (stats) => Object.entries(stats.rejections).filter(([, n]) => n > 0)
async function report(label) {
  const { stats, fds } = await server.stats()
  const rejections = rejectionsOf(stats).map(([reason, n]) => `${reason} ${n}`).join(', ')
  console.log(
    `[${elapsed()} s] ${label.padEnd(7)} RSS ${mib(server.rss()).padStart(10)}  fds ${String(fds).padStart(5)}  live ${String(stats.connectionsLive).padStart(4)}  ` +
      `total ${stats.connectionsTotal}  legit ok ${legit.ok} failed ${legit.failed}, sse events ${legit.sseEvents}, ws echoes ${legit.wsEchoes}\n` +
      `         rejections: ${rejections || 'none'}`,
  )
  return { rss: server.rss(), fds: server.fds(), stats }
}

/** Pauses the attacks, lets lingering closes and timeouts run out, and samples the quiet server. */
async function quiet(label) {
  paused = true
  await sleep(6000) // the longest attack phase, headerTimeout / readTimeout 2 s, lingering close 2 s
  const sample = await report(label)
  paused = false
  return sample
}

console.log(`soak: ${minutes} min, report every ${intervalMs / 1000} s, warm-up ${warmupMs / 1000} s; server pid ${server.pid} on ${server.url}`)
const before = await report('start')
// Legitimate traffic: two loops of each kind, 20 SSE subscribers with a publish every 200 ms,
// 10 WebSocket echo clients; then the attacks.
const legitLoops = Object.values(steps).flatMap((step) => [0, 1].map((i) => legitLoop(i + Math.floor(Math.random() * 8), step)))
for (let i = 0; i < 20; i++) subscribe(i)
const publisher = setInterval(() => get(`${server.url}/publish`, { localAddress: '127.0.0.209' }).catch(() => failed('publish')), 200)
for (let i = 0; i < 10; i++) echoClient(i)
const attacking = attackLoop()
const ticker = setInterval(() => report('').catch((error) => console.log(`[${elapsed()} s] stats failed: ${error.message}`)), intervalMs)
await sleep(warmupMs)
const warm = await quiet('warm')
await sleep(Math.max(0, durationMs - (Date.now() - started)))
clearInterval(ticker)
// The end: attacks paused for the quiet sample, legitimate traffic still on (as at warm-up).
const end = await quiet('end')
running = false
clearInterval(publisher)
subscribers.forEach((s) => s.destroy())
echoes.forEach((c) => c.terminate())
await Promise.all([attacking, ...legitLoops])
await sleep(3000)
const after = await report('stopped')

// ---- verdict ----
const rssMargin = Math.max(32 * MiB, warm.rss * 0.2)
const fdMargin = 16
const rssFlat = end.rss - warm.rss <= rssMargin
const fdsFlat = end.fds - warm.fds <= fdMargin
const fdsBack = after.fds - before.fds <= fdMargin
const leftovers = readdirSync(uploads).filter((name) => name.startsWith('.'))
console.log(`\nattacks run: ${Object.entries(attackCounts).map(([name, n]) => `${name} ×${n}`).join(', ')}`)
if (skipped.size) console.log(`not run: ${[...skipped].join('; ')}`)
console.log(`legitimate: ${legit.ok} requests ok, ${legit.failed} failed${legit.failed ? ` (${[...legit.failures].map(([what, n]) => `${what} ×${n}`).join(', ')})` : ''}; ${legit.sseEvents} SSE events, ${legit.wsEchoes} WebSocket echoes`)
console.log(`RSS: ${mib(before.rss)} at start, ${mib(warm.rss)} after warm-up, ${mib(end.rss)} at the end (margin ${mib(rssMargin)}): ${rssFlat ? 'flat' : 'GREW'}`)
console.log(`fds: ${before.fds} at start, ${warm.fds} after warm-up, ${end.fds} at the end, ${after.fds} with all traffic stopped (margin ${fdMargin}): ${fdsFlat && fdsBack ? 'flat' : 'GREW'}`)
console.log(`temporary upload files left: ${leftovers.length}`)
const pass = rssFlat && fdsFlat && fdsBack && leftovers.length === 0 && server.alive()
console.log(`verdict: ${pass ? 'PASS' : 'FAIL'}`)
cleanup()
process.exit(pass ? 0 : 1)
