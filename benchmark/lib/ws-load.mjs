// The WebSocket load client (benchmark/ws-load, Rust): built once per run, spawned per measurement.
// It is single-threaded and, where `taskset` exists, pinned to the last core, leaving the other
// core(s) to the server. Every peer of the ws-* workloads is driven by the same pinned client.
import { existsSync } from 'node:fs'
import { cpus, platform } from 'node:os'
import { fileURLToPath } from 'node:url'
import { run, spawnChild, cpuSeconds } from './proc.mjs'

const crate = fileURLToPath(new URL('../ws-load/', import.meta.url))
const binary = `${crate}target/release/ws-load${platform() === 'win32' ? '.exe' : ''}`
const TASKSET = ['/usr/bin/taskset', '/bin/taskset'].find(existsSync)
const PIN = TASKSET && cpus().length > 1 ? String(cpus().length - 1) : null

/**
 * How many client processes a fan-out measurement spreads its subscribers over: one on a machine
 * of 2 cores (the other is the server's), else up to 4 on the upper half of the cores, each
 * pinned to a core of its own (`FANOUT_CLIENTS` overrides, e.g. to try the split on 2 cores).
 */
export const CLIENT_PROCESSES = Number(process.env.FANOUT_CLIENTS) || (cpus().length <= 2 ? 1 : Math.min(4, Math.floor(cpus().length / 2)))

/** `--sources` for many connections: 127.0.0.1..8 as client addresses (only Linux answers on all 127/8). */
export const SOURCES = platform() === 'linux' ? 8 : 1

let built
/** `cargo build --release` of benchmark/ws-load, once per run (a no-op when it is up to date). */
export function buildWsLoad() {
  built ??= run('cargo', ['build', '--release', '--quiet', '--manifest-path', `${crate}Cargo.toml`], { timeout: 900_000 }).then(
    ({ code, stderr }) => {
      if (code !== 0 || !existsSync(binary)) throw new Error(`cargo build of benchmark/ws-load failed: ${stderr.slice(-2000)}`)
    },
  )
  return built
}

/**
 * Starts `ws-load mode --flag value …`. Returns { child, connected, result }: `connected` resolves
 * with the count on its `CONNECTED <n>` line, `result` with its final JSON line; both reject if it
 * exits without them. `timeout` ms kills it.
 */
export async function wsLoad(mode, flags, { timeout = 300_000, core = 0 } = {}) {
  await buildWsLoad()
  const args = [mode, ...Object.entries(flags).flatMap(([key, value]) => [`--${key}`, String(value)])]
  // `core` counts down from the last one: client process k of a split runs on core n-1-k.
  const pin = PIN && String(Math.max(0, Number(PIN) - core))
  const child = pin
    ? spawnChild(TASKSET, ['-c', pin, binary, ...args], { stdio: ['pipe', 'pipe', 'pipe'] })
    : spawnChild(binary, args, { stdio: ['pipe', 'pipe', 'pipe'] })
  const timer = setTimeout(() => child.kill('SIGKILL'), timeout)
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (chunk) => (stdout += chunk))
  child.stderr.setEncoding('utf8').on('data', (chunk) => (stderr += chunk))
  child.stdin.on('error', () => {})
  const exited = new Promise((resolve, reject) => {
    child.on('error', reject)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal })
    })
  })
  const connected = new Promise((resolve, reject) => {
    const check = () => {
      const match = /^CONNECTED (\d+)$/m.exec(stdout)
      if (match) {
        child.stdout.off('data', check)
        resolve(Number(match[1]))
      }
    }
    child.stdout.on('data', check)
    exited.then(() => reject(new Error(`ws-load ${mode} exited before connecting: ${stderr || stdout}`)), reject)
  })
  connected.catch(() => {})
  const result = exited.then(({ code, signal }) => {
    const line = stdout.trim().split('\n').at(-1)
    if (code !== 0 || !line?.startsWith('{')) throw new Error(`ws-load ${mode} failed (${signal ?? code}): ${stderr || stdout}`)
    return JSON.parse(line)
  })
  result.catch(() => {})
  return { child, connected, result }
}

/**
 * `connections` subscribers spread over `CLIENT_PROCESSES` pinned client processes (`ws-load
 * mode`, `--histogram`), started together. Returns { connected, result }: the sum of their
 * counts, and one result whose latencies are the quantiles of all their samples merged (0.1 ms
 * buckets), deliveries, closes and client CPU summed.
 */
export async function wsLoadSpread(mode, flags, options) {
  const shares = Array.from({ length: CLIENT_PROCESSES }, (_, k) =>
    Math.floor(flags.connections / CLIENT_PROCESSES) + (k < flags.connections % CLIENT_PROCESSES ? 1 : 0),
  )
  const loads = await Promise.all(
    shares.map((connections, core) =>
      wsLoad(mode, { ...flags, connections, expect: Math.round((flags.expect / flags.connections) * connections), histogram: 1 }, { ...options, core }),
    ),
  )
  const connected = Promise.all(loads.map((load) => load.connected)).then((counts) => counts.reduce((a, b) => a + b, 0))
  connected.catch(() => {})
  const result = Promise.all(loads.map((load) => load.result)).then(mergeResults)
  result.catch(() => {})
  return { children: loads.map((load) => load.child), connected, result }
}

function mergeResults(results) {
  if (results.length === 1) return results[0]
  const counts = new Map()
  for (const { latencyHist = [] } of results) for (const [bucket, n] of latencyHist) counts.set(bucket, (counts.get(bucket) ?? 0) + n)
  const buckets = [...counts].sort((a, b) => a[0] - b[0])
  const total = buckets.reduce((sum, [, n]) => sum + n, 0)
  const quantile = (q) => {
    if (total === 0) return null
    const rank = Math.min(Math.floor(q * total), total - 1)
    let seen = 0
    for (const [bucket, n] of buckets) if ((seen += n) > rank) return bucket / 10
    return buckets.at(-1)[0] / 10
  }
  const sum = (key) => results.reduce((a, r) => a + (r[key] ?? 0), 0)
  return {
    ...results[0],
    connected: sum('connected'),
    failed: sum('failed'),
    closed: sum('closed'),
    delivered: sum('delivered'),
    seconds: Math.max(...results.map((r) => r.seconds)),
    msgPerSec: sum('msgPerSec'),
    p50Ms: quantile(0.5),
    p99Ms: quantile(0.99),
    maxMs: quantile(1),
    clientCpuS: sum('clientCpuS'),
    error: results.find((r) => r.error)?.error ?? null,
    processes: results.length,
    latencyHist: undefined,
  }
}

/**
 * A fan-out measurement: `connections` subscribers (`mode` fanout or sse) at `url`, then the
 * server's /api/publish sends `rate` events per second to each for `seconds`. Resolves the
 * client's result, how many deliveries were expected, and the server's CPU seconds meanwhile.
 */
export async function fanoutRun(mode, { url, port, pids, connections, rate, seconds, size = 0, flags = {} }) {
  const expect = connections * rate * seconds
  const load = await wsLoad(
    mode,
    { url, connections, sources: SOURCES, expect, 'idle-ms': 2000, 'timeout-ms': (seconds + 60) * 1000, ...flags },
    { timeout: (seconds + 120) * 1000 },
  )
  const connected = await load.connected
  if (connected < connections) throw new Error(`${connected}/${connections} subscribed: ${(await load.result).error}`)
  const cpuBefore = cpuSeconds(pids())
  const response = await fetch(`http://127.0.0.1:${port}/api/publish?rate=${rate}&seconds=${seconds}${size ? `&size=${size}` : ''}`)
  if (!response.ok) throw new Error(`/api/publish answered ${response.status}`)
  const result = await load.result
  return { result, expect, cpu: cpuSeconds(pids()) - cpuBefore }
}
