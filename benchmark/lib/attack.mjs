// A bounded mix of attacks against a floodgate server in its own process, and the server it hits:
// used by benchmark/attack-memory.mjs (RSS after an attack, the curve) and by
// __test__/memory.test.mjs (the same, shorter, with a bound). Clients come from 127.0.0.2..N
// (Linux answers on all of 127/8), so per-address tables fill with many keys.
import net from 'node:net'
import { spawn, execFile } from 'node:child_process'
import { readFileSync, readdirSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { readyPort } from '../../__test__/helpers.mjs'

const INDEX = fileURLToPath(new URL('../../index.js', import.meta.url))
const H2_CLIENT = fileURLToPath(new URL('../../__test__/tools/h2_client.py', import.meta.url))
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** The server under attack: default protections, every kind of route, h2c on; gc() every second when exposed. */
const SERVER = `
const { Server, StreamingApp } = require(${JSON.stringify(INDEX)})
const server = new Server({ http2: true })
const app = new StreamingApp({ rateLimitRequests: 600, rateLimitWindow: '1m' })
app.files('/files', { root: process.env.ROOT })
app.uploads('/up', { dir: process.env.ROOT, fsync: false })
app.get('/json', () => Response.json({ hello: 'world' }))
app.ws('/echo', { message: (socket, data) => socket.send(data) })
app.ws('/quiet', {})
server.mount('/stream', app)
server.mount('/api/json', () => Response.json({ hello: 'world' }))
if (global.gc) setInterval(() => global.gc(), 1000).unref()
server.listen({ port: 0, host: '127.0.0.1' }).then(({ port }) => console.log('READY ' + port))
process.on('SIGTERM', () => server.close({ drain: 0 }).then(() => process.exit(0)))
`

/** Starts the attacked server (node --expose-gc); resolves { pid, port, rss(), fds(), stop(), root }. */
export async function startAttackedServer({ env = {} } = {}) {
  const root = mkdtempSync(join(tmpdir(), 'floodgate-attack-'))
  writeFileSync(join(root, 'small.txt'), 'hello\n')
  writeFileSync(join(root, 'big.bin'), randomBytes(4 << 20))
  const child = spawn(process.execPath, ['--expose-gc', '-e', SERVER], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, ROOT: root, ...env },
  })
  const port = await readyPort(child)
  const stop = () => {
    child.kill('SIGKILL')
    rmSync(root, { recursive: true, force: true })
  }
  return { pid: child.pid, port, root, stop, rss: () => rssOf(child.pid), fds: () => readdirSync(`/proc/${child.pid}/fd`).length }
}

export function rssOf(pid) {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024
}

function maskedFrame(opcode, payload) {
  const mask = randomBytes(4)
  const data = Buffer.from(payload)
  for (let i = 0; i < data.length; i++) data[i] ^= mask[i & 3]
  const head = data.length < 126 ? Buffer.from([0x80 | opcode, 0x80 | data.length]) : Buffer.from([0x80 | opcode, 0x80 | 126, data.length >> 8, data.length & 255])
  return Buffer.concat([head, mask, data])
}

/**
 * Runs every attack at once for `seconds` against 127.0.0.1:`port`, then closes every client
 * socket. `scale` multiplies the counts (1: ~4,500 slow sockets, 20 ping floods, 32 request
 * loops, h2load, stalled h2 streams, aborted uploads). Resolves with what each attack did.
 */
export async function runAttacks({ port, seconds = 40, scale = 1, sources = 39, python = '/usr/bin/python3', h2load = '/usr/bin/h2load' }) {
  const until = Date.now() + seconds * 1000
  const live = () => Date.now() < until
  const sockets = new Set()
  const counts = { slowSockets: 0, refused: 0, requests: 0, pings: 0, wsMessages: 0, uploadsAborted: 0, h2: null, h2Stalled: 0 }
  const address = (i) => `127.0.0.${2 + (i % sources)}`
  const track = (socket) => {
    sockets.add(socket)
    socket.on('error', () => {})
    socket.on('close', () => sockets.delete(socket))
    return socket
  }
  const open = (i) =>
    new Promise((resolve) => {
      const socket = track(net.connect({ port, host: '127.0.0.1', localAddress: address(i) }))
      socket.once('connect', () => resolve(socket))
      socket.once('error', () => resolve(null))
    })

  const tasks = []
  /** `loops` tasks that each open a connection after another until the run ends: `once(socket, i, n)`. */
  const connectionLoops = (loops, once) => {
    for (let i = 0; i < loops; i++) {
      tasks.push(
        (async () => {
          for (let n = i; live(); ) {
            const socket = await open(n++)
            if (socket) await once(socket, i, n)
          }
        })(),
      )
    }
  }
  // Slowloris: heads trickled a byte at a time until the server's headerTimeout cuts them,
  // then again; more sockets per address than maxConnectionsPerIp, so some are refused (429).
  const slow = Math.round(4500 * scale)
  for (let i = 0; i < slow; i++) {
    tasks.push(
      (async () => {
        await sleep((i % 200) * 5)
        while (live()) {
          const socket = await open(i)
          if (!socket) {
            await sleep(200)
            continue
          }
          counts.slowSockets++
          let refused = false
          socket.on('data', (d) => {
            if (d.toString('latin1').startsWith('HTTP/1.1 429')) refused = true
          })
          socket.write('GET /stream/files/small.txt HTTP/1.1\r\nHost: x\r\n')
          while (live() && !socket.destroyed && socket.readyState === 'open') {
            await sleep(1000 + (i % 7) * 200)
            socket.write('X')
          }
          if (refused) counts.refused++
          socket.destroy()
          await sleep(100)
        }
      })(),
    )
  }
  // WebSocket ping floods (and messages to an echo route), from raw sockets that never read.
  const ping = maskedFrame(0x9, Buffer.alloc(125, 1))
  const message = maskedFrame(0x1, Buffer.alloc(1000, 97))
  for (let i = 0; i < Math.round(20 * scale); i++) {
    tasks.push(
      (async () => {
        while (live()) {
          const socket = await open(i + 7)
          if (!socket) break
          socket.write(
            `GET /stream/${i % 2 ? 'echo' : 'quiet'} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
              `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
          )
          socket.resume()
          while (live() && !socket.destroyed) {
            const batch = []
            for (let k = 0; k < 64; k++) batch.push(ping)
            if (i % 2) batch.push(message)
            counts.pings += 64
            counts.wsMessages += i % 2
            if (!socket.write(Buffer.concat(batch))) await new Promise((r) => (socket.once('drain', r), socket.once('close', r)))
            await sleep(2)
          }
          socket.destroy()
        }
      })(),
    )
  }
  // Many short requests, a fresh connection each, from every address.
  connectionLoops(Math.round(32 * scale), async (socket, i, n) => {
    const path = ['/api/json', '/stream/json', '/stream/files/small.txt', '/stream/files/big.bin'][n % 4]
    const range = path.endsWith('.bin') ? `Range: bytes=${n % 1000}-${(n % 1000) + 100000}\r\n` : ''
    socket.end(`GET ${path} HTTP/1.1\r\nHost: x\r\n${range}Connection: close\r\n\r\n`)
    socket.resume()
    await new Promise((r) => socket.once('close', r))
    counts.requests++
  })
  // Uploads aborted halfway: 8 MiB announced, 1 MiB sent, then reset.
  const piece = Buffer.alloc(64 * 1024, 5)
  connectionLoops(Math.round(6 * scale), async (socket, i, n) => {
    socket.write(`PUT /stream/up/u${i}-${n}.bin HTTP/1.1\r\nHost: x\r\nContent-Length: ${8 << 20}\r\n\r\n`)
    for (let k = 0; k < 16 && !socket.destroyed; k++) {
      if (!socket.write(piece)) await new Promise((r) => (socket.once('drain', r), socket.once('close', r)))
    }
    socket.resetAndDestroy()
    counts.uploadsAborted++
    await sleep(20)
  })
  // HTTP/2: a stream flood with h2load, and connections whose streams keep a shut window on a big file.
  const h2Seconds = Math.max(5, seconds - 5)
  tasks.push(
    run(h2load, ['-c', String(Math.round(20 * scale)), '-m', '100', '-D', String(h2Seconds), '-t', '1', `http://127.0.0.1:${port}/api/json`], (seconds + 30) * 1000).then(
      (out) => (counts.h2 = /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded/.exec(out)?.slice(1).join('/') ?? out.slice(-300)),
    ),
  )
  for (let i = 0; i < Math.round(4 * scale); i++) {
    tasks.push(
      (async () => {
        while (live()) {
          const left = Math.max(2, Math.min(15, (until - Date.now()) / 1000))
          await run(python, [H2_CLIENT, 'stall', String(port), '/stream/files/big.bin', '100', String(left)], (left + 20) * 1000)
          counts.h2Stalled += 100
        }
      })(),
    )
  }
  await sleep(seconds * 1000)
  await Promise.race([Promise.allSettled(tasks), sleep(30_000)])
  for (const socket of sockets) socket.destroy()
  return counts
}

function run(command, args, timeout) {
  return new Promise((resolve) => {
    execFile(command, args, { timeout: Math.round(timeout), maxBuffer: 16 << 20 }, (error, stdout, stderr) => resolve(String(stdout) + String(stderr) + (error ? String(error.message) : '')))
  })
}

/**
 * The whole measurement: warm-up, RSS at start, attacks, then RSS every `every` s for `settle` s.
 * `python` and `h2load` are the tools' paths (runAttacks' defaults otherwise).
 * Returns { startMiB, startFds, peakMiB, curve: [{ t, rssMiB, fds }], counts }.
 */
export async function measureAttack({ seconds = 40, settle = 60, every = 5, scale = 1, env = {}, log = () => {}, atEnd, ...tools } = {}) {
  const server = await startAttackedServer({ env })
  try {
    // Warm-up: a few of every kind of request, so lazily made state is there before the baseline.
    await runAttacks({ port: server.port, seconds: 2, scale: 0.05, ...tools })
    await sleep(6000)
    const start = server.rss()
    const startFds = server.fds()
    log(`start: ${(start / 2 ** 20).toFixed(1)} MiB, ${startFds} fds`)
    let peak = start
    const sampler = setInterval(() => (peak = Math.max(peak, server.rss())), 250)
    const counts = await runAttacks({ port: server.port, seconds, scale, ...tools })
    clearInterval(sampler)
    log(`attacks over: ${JSON.stringify(counts)}; peak ${(peak / 2 ** 20).toFixed(1)} MiB`)
    const curve = []
    const began = Date.now()
    for (let t = 0; t <= settle; t += every) {
      await sleep(Math.max(0, began + t * 1000 - Date.now()))
      const point = { t, rssMiB: +(server.rss() / 2 ** 20).toFixed(1), fds: server.fds() }
      curve.push(point)
      log(`+${t}s: ${point.rssMiB} MiB, ${point.fds} fds`)
    }
    await atEnd?.(server)
    return { startMiB: +(start / 2 ** 20).toFixed(1), startFds, peakMiB: +(peak / 2 ** 20).toFixed(1), curve, counts }
  } finally {
    server.stop()
  }
}
