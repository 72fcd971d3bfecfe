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
export async function wsLoad(mode, flags, { timeout = 300_000 } = {}) {
  await buildWsLoad()
  const args = [mode, ...Object.entries(flags).flatMap(([key, value]) => [`--${key}`, String(value)])]
  const child = PIN
    ? spawnChild(TASKSET, ['-c', PIN, binary, ...args], { stdio: ['pipe', 'pipe', 'pipe'] })
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
