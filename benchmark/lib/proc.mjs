// Server children: spawn, wait for "READY <port>", sample memory, stop. Every child is
// killed when the harness exits, however it exits.
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'

const children = new Set()
const killAll = () => children.forEach((child) => child.kill('SIGKILL'))
process.on('exit', killAll)
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    killAll()
    process.exit(130)
  })
}

/** Starts `command args`, resolves { child, port } once it prints `READY <port>`. */
export function startServer(command, args, { env = {}, timeout = 20_000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } })
    children.add(child)
    let output = ''
    child.on('exit', (code, signal) => {
      children.delete(child)
      clearTimeout(timer)
      reject(new Error(`${command} exited (${signal ?? code}) before it was ready: ${output}`)) // no-op once ready
    })
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`${command} did not become ready: ${output}`))
    }, timeout)
    const onData = (chunk) => {
      output += chunk
      const match = /READY (\d+)/.exec(output)
      if (match) {
        clearTimeout(timer)
        resolve({ child, port: Number(match[1]) })
      }
    }
    child.stdout.on('data', onData)
    child.stderr.on('data', (chunk) => (output += chunk))
    child.on('error', reject)
  })
}

export function stopServer(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve()
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000)
    child.once('exit', () => {
      clearTimeout(timer)
      resolve()
    })
    child.kill('SIGTERM')
  })
}

/** Resident set size of `pid` (and its children, for nginx's workers) in bytes. */
export function rss(pids) {
  let total = 0
  for (const pid of [].concat(pids)) {
    try {
      const status = readFileSync(`/proc/${pid}/status`, 'utf8')
      total += Number(/VmRSS:\s+(\d+) kB/.exec(status)[1]) * 1024
    } catch {
      // The process is gone or this is not Linux.
    }
  }
  return total
}

/** CPU seconds (utime + stime, all threads) that `pids` have used so far, from /proc. */
export function cpuSeconds(pids) {
  let total = 0
  for (const pid of [].concat(pids)) {
    try {
      const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
      total += (Number(fields[11]) + Number(fields[12])) / 100 // clock ticks
    } catch {
      // The process is gone or this is not Linux.
    }
  }
  return total
}

/** Spawns `command args` as a child that is killed when the harness exits. */
export function spawnChild(command, args, options) {
  const child = spawn(command, args, options)
  children.add(child)
  child.on('exit', () => children.delete(child))
  return child
}

/** Child pids of `pid` (nginx workers), from /proc. */
export function childPids(pid) {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number)
  } catch {
    return []
  }
}

/** Samples the peak RSS of `pids()` every 50 ms while `work` runs. */
export async function peakRss(pids, work) {
  const before = rss(pids())
  let peak = before
  const timer = setInterval(() => (peak = Math.max(peak, rss(pids()))), 50)
  try {
    const result = await work()
    return { result, before, peak: Math.max(peak, rss(pids())) }
  } finally {
    clearInterval(timer)
  }
}

/** Runs a command to completion; resolves { code, stdout, stderr }. */
export function run(command, args, { timeout = 300_000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    children.add(child)
    let stdout = ''
    let stderr = ''
    const timer = setTimeout(() => child.kill('SIGKILL'), timeout)
    child.stdout.on('data', (chunk) => (stdout += chunk))
    child.stderr.on('data', (chunk) => (stderr += chunk))
    child.on('error', reject)
    child.on('exit', (code) => {
      clearTimeout(timer)
      children.delete(child)
      resolve({ code, stdout, stderr })
    })
  })
}
