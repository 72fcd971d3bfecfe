// Shared test helpers: real servers on 127.0.0.1 port 0, real sockets, temp folders.
import { createRequire } from 'node:module'
import { mkdtempSync, writeFileSync, mkdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import net from 'node:net'
import http from 'node:http'
import { execFile, spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'

const require = createRequire(import.meta.url)
export const floodgate = require('../index.js')
export const { Server, StreamingApp } = floodgate

/** A temp folder with the given files ({ 'a/b.txt': 'content' | Buffer }). */
export function fixture(files = {}) {
  const root = mkdtempSync(join(tmpdir(), 'floodgate-test-'))
  for (const [name, content] of Object.entries(files)) {
    mkdirSync(dirname(join(root, name)), { recursive: true })
    writeFileSync(join(root, name), content)
  }
  return { root, cleanup: () => rmSync(root, { recursive: true, force: true }) }
}

/**
 * Starts a server with one streaming app at /stream and a files mount at /stream/files.
 * Returns { server, url, base, close }.
 */
export async function startFiles(t, { server: serverOptions = {}, streaming = {}, files = {}, root }) {
  const server = new Server(serverOptions)
  const app = new StreamingApp({ rateLimitBandwidth: 0, rateLimitRequests: 0, ...streaming })
  app.files('/files', { root, ...files })
  server.mount('/stream', app)
  const { url, port } = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  return { server, url, port, base: `${url}/stream/files` }
}

/** GET/HEAD with Node's http client; resolves { status, headers, body: Buffer }. */
export function request(url, { method = 'GET', headers = {}, localAddress, agent = false } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, localAddress, agent }, (res) => {
      const chunks = []
      res.on('data', (chunk) => chunks.push(chunk))
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

/** Sends raw bytes on a fresh socket and collects everything until the server closes. */
export function rawExchange(port, payload, { localAddress, timeout = 15_000 } = {}) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress })
    const chunks = []
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new Error('raw exchange timed out'))
    }, timeout)
    socket.on('connect', () => socket.write(payload))
    socket.on('data', (chunk) => chunks.push(chunk))
    socket.on('error', () => {})
    socket.on('close', () => {
      clearTimeout(timer)
      resolve(Buffer.concat(chunks).toString('latin1'))
    })
  })
}

/** Opens a socket and resolves once connected. */
export function connect(port, { localAddress } = {}) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress }, () => resolve(socket))
    socket.on('error', reject)
  })
}

/** Resolves when `socket` closes, with everything it received and when. */
export function untilClosed(socket) {
  const chunks = []
  socket.on('data', (chunk) => chunks.push(chunk))
  socket.on('error', () => {})
  return new Promise((resolve) =>
    socket.on('close', () => resolve({ text: Buffer.concat(chunks).toString('latin1'), at: Date.now() })),
  )
}

/** Runs curl; resolves { code, stdout, stderr }. */
export function curl(args, { timeout = 60_000 } = {}) {
  return new Promise((resolve) => {
    execFile('curl', args, { timeout, maxBuffer: 64 * 1024 * 1024, encoding: 'buffer' }, (error, stdout, stderr) => {
      resolve({ code: error ? (error.code ?? 1) : 0, stdout, stderr: stderr.toString() })
    })
  })
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `check` until it returns truthy or `timeout` passes. */
export async function eventually(check, { timeout = 5_000, interval = 25 } = {}) {
  const until = Date.now() + timeout
  for (;;) {
    const value = await check()
    if (value) return value
    if (Date.now() > until) return value
    await sleep(interval)
  }
}

/**
 * Runs `script` (CommonJS, with `floodgate` in scope as the built package) in its own Node
 * process, so that process's memory can be measured alone. The script prints `READY <port>`.
 * Resolves { port, rss } where rss() reads the child's resident set size in bytes (Linux).
 */
export async function serverProcess(t, script) {
  const prelude = `const floodgate = require(${JSON.stringify(new URL('../index.js', import.meta.url).pathname)});`
  const child = spawn(process.execPath, ['-e', prelude + script], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => child.kill('SIGKILL'))
  const port = await new Promise((resolve) => child.stdout.on('data', (d) => resolve(Number(/READY (\d+)/.exec(d)[1]))))
  const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))[1]) * 1024
  return { port, rss }
}
