// Shared test helpers: real servers on 127.0.0.1 port 0, real sockets, temp folders.
import { createRequire } from 'node:module'
import { mkdtempSync, writeFileSync, mkdirSync, rmSync, statSync, accessSync, constants } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname, delimiter, isAbsolute } from 'node:path'
import net from 'node:net'
import http from 'node:http'
import { execFile, execFileSync, spawn, spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { readFileSync } from 'node:fs'

const require = createRequire(import.meta.url)
export const floodgate = require('../index.js')
export const { Server, StreamingApp } = floodgate

// ---- External tools the tests spawn: found once, and a test that needs a missing one is skipped ----

/** Under CI a missing tool fails the tests that need it instead of skipping them. */
export const inCI = ['true', '1'].includes(String(process.env.CI).toLowerCase())

function isExecutableFile(path) {
  try {
    if (!statSync(path).isFile()) return false
    accessSync(path, constants.X_OK)
    return true
  } catch {
    return false
  }
}

/** The first of `names` found as an executable file on PATH (with PATHEXT's endings on Windows). */
export function onPath(names) {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter(Boolean)
  const endings = process.platform === 'win32' ? ['', ...(process.env.PATHEXT ?? '.EXE;.CMD;.BAT').toLowerCase().split(';')] : ['']
  for (const name of names) {
    for (const dir of dirs) {
      for (const ending of endings) {
        const path = join(dir, name + ending)
        if (isExecutableFile(path)) return path
      }
    }
  }
  return undefined
}

/**
 * Finds an external tool. `env` names variables that point at it (a path, or a name looked up on
 * PATH); when one is set it is the only candidate. Otherwise `names` on PATH, then `paths`.
 * Returns { name, path, missing }: `missing` is the one line to show when it is not found.
 */
export function findTool({ name, env = [], names, paths = [], install }) {
  const variable = env.find((key) => process.env[key])
  if (variable) {
    const value = process.env[variable]
    const path = isAbsolute(value) || /[\\/]/.test(value) ? (isExecutableFile(value) ? value : undefined) : onPath([value])
    return { name, path, missing: path ? undefined : `${variable}=${value} is not an executable file: ${install}` }
  }
  const path = onPath(names) ?? paths.find(isExecutableFile)
  return { name, path, missing: path ? undefined : `no ${name} on PATH (${names.join(', ')}): ${install}` }
}

/** Chromium or Chrome, for the tests where a browser's own EventSource and WebSocket are the clients. */
export const chromiumTool = findTool({
  name: 'Chromium or Chrome',
  env: ['CHROME_BIN', 'FLOODGATE_CHROMIUM'],
  names: ['chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable'],
  // Where Chrome is installed (and not put on PATH) on macOS and Windows, as on CI runners.
  paths: [
    '/Applications/Google Chrome.app/Contents/MacOS/Google Chrome',
    '/Applications/Chromium.app/Contents/MacOS/Chromium',
    ...['PROGRAMFILES', 'PROGRAMFILES(X86)', 'LOCALAPPDATA']
      .filter((key) => process.env[key])
      .map((key) => join(process.env[key], 'Google', 'Chrome', 'Application', 'chrome.exe')),
  ],
  install: 'apt-get install chromium, or set CHROME_BIN to a Chromium or Chrome binary',
})

/** curl, a real HTTP/1.1 and HTTP/2 client in its own process. */
export const curlTool = findTool({
  name: 'curl',
  env: ['FLOODGATE_CURL'],
  names: ['curl'],
  install: 'apt-get install curl, or set FLOODGATE_CURL to a curl binary',
})

/** openssl, to make the self-signed certificates of the TLS tests. */
export const opensslTool = findTool({
  name: 'openssl',
  env: ['FLOODGATE_OPENSSL'],
  names: ['openssl'],
  install: 'apt-get install openssl, or set FLOODGATE_OPENSSL to an openssl binary',
})

/** A self-signed P-256 certificate for `names` (DNS names; 127.0.0.1 too): { cert, key } as PEM text. */
export function selfSignedCertificate(names = ['localhost']) {
  const dir = mkdtempSync(join(tmpdir(), 'floodgate-cert-'))
  try {
    const san = [...names.map((name) => `DNS:${name}`), 'IP:127.0.0.1'].join(',')
    execFileSync(opensslTool.path, [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
      '-subj', `/CN=${names[0]}`, '-addext', `subjectAltName=${san}`,
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
    ], { stdio: 'ignore' })
    return { cert: readFileSync(join(dir, 'cert.pem'), 'utf8'), key: readFileSync(join(dir, 'key.pem'), 'utf8') }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** h2load (nghttp2's load client), a real HTTP/2 client that opens many streams at once. */
export const h2loadTool = findTool({
  name: 'h2load',
  env: ['FLOODGATE_H2LOAD'],
  names: ['h2load'],
  install: 'apt-get install nghttp2-client, or set FLOODGATE_H2LOAD to an h2load binary',
})

/**
 * A Python 3 that imports `module` (Debian's python3-h2, python3-websockets): the first of
 * FLOODGATE_PYTHON, python3 on PATH, /usr/bin/python3 that can.
 */
export function pythonWith(module, debianPackage) {
  const install = `apt-get install ${debianPackage} (a python3 that can import ${module}), or set FLOODGATE_PYTHON`
  const candidates = [process.env.FLOODGATE_PYTHON, onPath(['python3']), '/usr/bin/python3'].filter(Boolean)
  for (const python of candidates) {
    const imports = spawnSync(python, ['-c', `import ${module}`], { stdio: 'ignore', timeout: 10_000 })
    if (imports.status === 0) return { name: `python3 with ${module}`, path: python, missing: undefined }
  }
  return { name: `python3 with ${module}`, path: undefined, missing: `no python3 that imports ${module}: ${install}` }
}

/** Runs a script of `__test__/tools` with `python`; resolves its last stdout line as JSON. */
export function runPythonTool(python, script, args, { timeout = 60_000, env = {} } = {}) {
  const path = fileURLToPath(new URL(`./tools/${script}`, import.meta.url))
  return new Promise((resolve, reject) => {
    execFile(python.path, [path, ...args.map(String)], { timeout, env: { ...process.env, ...env } }, (error, stdout, stderr) => {
      if (error) return reject(new Error(`${script} ${args.join(' ')}: ${error.message}\n${stderr}`))
      resolve(JSON.parse(stdout.trim().split('\n').pop()))
    })
  })
}

/**
 * `test` (or `test.serial`, or any (title, impl) wrapper with a .skip) for tests that spawn `tool`.
 * When the tool is missing the test is skipped (counted as skipped by ava), its title saying what
 * to install; under CI it runs and fails with that line instead.
 */
export function needs(tool, test) {
  if (!tool.missing) return test
  // The wrappers carry `skip` and `serial` too, so `needs(a, needs(b, test))` composes.
  if (inCI) {
    const failed = (title) => test(title, (t) => t.fail(tool.missing))
    return Object.assign(failed, { skip: failed, serial: failed })
  }
  const skipped = (title, impl) => test.skip(`${title} [skipped: ${tool.missing}]`, impl)
  return Object.assign(skipped, { skip: skipped, serial: skipped })
}

/**
 * `base` (ava's `test`) on the platforms a test can run on (Node's `process.platform` names); elsewhere it is
 * skipped, its title saying why. Never quietly passed.
 */
export function onPlatforms(platforms, why, base) {
  if (platforms.includes(process.platform)) return base
  const skipped = (title, impl) => base.skip(`${title} [skipped on ${process.platform}: ${why}]`, impl)
  return Object.assign(skipped, { skip: skipped, serial: skipped }) // composes with needs()
}

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
      const received = Buffer.concat(chunks).toString('latin1')
      const sent = String(payload).split('\r\n')[0]
      reject(new Error(`raw exchange timed out after ${timeout} ms (sent ${JSON.stringify(sent)}; received ${JSON.stringify(received.slice(0, 200))})`))
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

/** Runs curl (tests that call it are declared with needs(curlTool, test)); resolves { code, stdout, stderr }. */
export function curl(args, { timeout = 60_000 } = {}) {
  if (curlTool.missing) throw new Error(curlTool.missing)
  return new Promise((resolve) => {
    // execFile reports a spawn failure and the timeout's kill through `error`: never uncaught.
    execFile(curlTool.path, args, { timeout, maxBuffer: 64 * 1024 * 1024, encoding: 'buffer' }, (error, stdout, stderr) => {
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
 * Resolves { port, rss } where rss() reads the child's resident set size in bytes.
 */
/**
 * The port a server process prints as `READY <port>`; rejects if it ends first (`stderr()`, when
 * given, says what it printed).
 */
export function readyPort(child, stderr = () => '') {
  return new Promise((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (d) => {
      out += d
      const ready = /READY (\d+)/.exec(out)
      if (ready) resolve(Number(ready[1]))
    })
    child.on('error', reject)
    child.on('exit', (code, signal) => {
      const said = stderr()
      reject(new Error(`the server process ended (${signal ?? `code ${code}`}) before READY${said ? `; stderr:\n${said}` : ''}`))
    })
  })
}

export async function serverProcess(t, script) {
  const prelude = `const floodgate = require(${JSON.stringify(fileURLToPath(new URL('../index.js', import.meta.url)))});`
  const child = spawn(process.execPath, ['-e', prelude + script], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => child.kill('SIGKILL'))
  const port = await readyPort(child)
  return { port, child, rss: () => residentBytes(child.pid) }
}

/**
 * A server process with one StreamingApp (`app` options) at `/` whose uploads mount at `/up`
 * writes to `dir` with `uploads` options; resolves { port, rss } as `serverProcess`.
 */
export function uploadsProcess(t, dir, uploads, app = {}) {
  return serverProcess(
    t,
    `const { Server, StreamingApp } = floodgate
    const server = new Server()
    const app = new StreamingApp(${JSON.stringify({ maxUploadSize: '1gb', rateLimitRequests: 0, ...app })})
    app.uploads('/up', ${JSON.stringify({ dir, ...uploads })})
    server.mount('/', app)
    server.listen({ port: 0 }).then(({ port }) => console.log('READY ' + port))`,
  )
}

/** Runs `action` while sampling `rss` every 10 ms; resolves { result, growth } (growth in MiB). */
export async function rssGrowthDuring(rss, action) {
  const before = rss()
  let peak = before
  const sampler = setInterval(() => (peak = Math.max(peak, rss())), 10)
  try {
    const result = await action()
    return { result, growth: (Math.max(peak, rss()) - before) / (1024 * 1024) }
  } finally {
    clearInterval(sampler)
  }
}

/** A process's resident set size in bytes: /proc on Linux, `ps` on macOS, PowerShell on Windows. */
export function residentBytes(pid) {
  if (process.platform === 'linux') return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024
  if (process.platform === 'win32') {
    return Number(execFileSync('powershell', ['-NoProfile', '-Command', `(Get-Process -Id ${pid}).WorkingSet64`]).toString().trim())
  }
  return Number(execFileSync('ps', ['-o', 'rss=', '-p', String(pid)]).toString().trim()) * 1024
}

// ---- WebSocket helpers: the ws package as a client, a hand-made handshake, headless Chromium ----

export const WebSocketClient = require('ws')
const { createHash, randomBytes } = require('node:crypto')

/**
 * A server with one StreamingApp at /ws whose WebSocket routes are `routes` ({ '/echo': { ... } });
 * `setup(app)` may add other routes before it listens. Returns { server, app, port, url, base }
 * where `base` is `ws://127.0.0.1:PORT/ws`.
 */
export async function startWs(t, routes, appOptions = {}, { setup, ...serverOptions } = {}) {
  const server = new Server(serverOptions)
  const app = new StreamingApp({ rateLimitRequests: 0, ...appOptions })
  for (const [path, handlers] of Object.entries(routes)) app.ws(path, handlers)
  setup?.(app)
  server.mount('/ws', app)
  const { url, port } = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  return { server, app, port, url, base: `ws://127.0.0.1:${port}/ws` }
}

/**
 * Opens a ws client (no permessage-deflate, so sizes on the wire are the sizes sent). Resolves
 * once open with { client, messages: [{ data, isBinary }], texts: [string], pings, closed,
 * closing } (`closing` resolves { code, reason, at } on close). Rejects with { status, headers }
 * when the upgrade is answered with anything but 101. Terminated at teardown when `t` is given.
 */
export function wsOpen(t, url, options = {}) {
  const client = new WebSocketClient(url, { perMessageDeflate: false, handshakeTimeout: 10_000, ...options })
  const state = { client, messages: [], texts: [], pings: 0, closed: undefined, error: undefined }
  client.on('error', (error) => (state.error = error))
  client.on('message', (data, isBinary) => {
    const value = isBinary ? Buffer.from(data) : data.toString()
    state.messages.push({ data: value, isBinary })
    if (!isBinary) state.texts.push(value)
  })
  client.on('ping', () => state.pings++)
  state.closing = new Promise((resolve) =>
    client.on('close', (code, reason) => {
      state.closed = { code, reason: reason.toString(), at: Date.now() }
      resolve(state.closed)
    }),
  )
  if (t) t.teardown(() => client.terminate())
  return new Promise((resolve, reject) => {
    client.once('open', () => {
      state.openedAt = Date.now()
      resolve(state)
    })
    client.once('unexpected-response', (req, res) => {
      res.resume()
      reject(Object.assign(new Error(`upgrade answered ${res.statusCode}`), { status: res.statusCode, headers: res.headers }))
      client.terminate()
    })
    client.once('close', () => reject(state.error ?? new Error('closed before it opened')))
  })
}

/** An upgrade that must be refused before 101: resolves { status, headers }; rejects if it opens. */
export async function wsRefused(url, options = {}) {
  let opened
  try {
    opened = await wsOpen(undefined, url, options)
  } catch (error) {
    if (error.status) return { status: error.status, headers: error.headers }
    throw error
  }
  opened.client.terminate()
  throw new Error(`${url} opened instead of being refused`)
}

/** The Sec-WebSocket-Accept a server must answer for `key` (RFC 6455 §4.2.2). */
export const wsAccept = (key) => createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64')

/** A masked client frame (RFC 6455 §5.2). */
export function wsFrame(opcode, payload = Buffer.alloc(0), { fin = true } = {}) {
  const data = Buffer.from(payload)
  const mask = randomBytes(4)
  const len = data.length
  const head = len < 126 ? Buffer.from([0, 0x80 | len]) : len < 65536 ? Buffer.alloc(4) : Buffer.alloc(10)
  if (len >= 126 && len < 65536) {
    head[1] = 0x80 | 126
    head.writeUInt16BE(len, 2)
  } else if (len >= 65536) {
    head[1] = 0x80 | 127
    head.writeBigUInt64BE(BigInt(len), 2)
  }
  head[0] = (fin ? 0x80 : 0) | opcode
  const masked = Buffer.from(data.map((byte, i) => byte ^ mask[i % 4]))
  return Buffer.concat([head, mask, masked])
}

/**
 * Completes a WebSocket handshake by hand on a raw socket and then only listens: it never
 * answers a ping. Resolves after the response head with { socket, status, head, key, frames:
 * [{ opcode, fin, payload, at }], requestedAt, openedAt, closed, closing } (`closing` resolves at
 * TCP close).
 */
export function rawWebSocket(port, path, { localAddress, headers = '' } = {}) {
  return new Promise((resolve, reject) => {
    const key = randomBytes(16).toString('base64')
    const socket = net.connect({ port, host: '127.0.0.1', localAddress })
    const state = { socket, key, status: 0, head: '', frames: [], closed: false, closedAt: 0 }
    let buffer = Buffer.alloc(0)
    let headDone = false
    state.closing = new Promise((done) =>
      socket.on('close', () => {
        state.closed = true
        state.closedAt = Date.now()
        if (!headDone) reject(new Error('closed before the handshake answer'))
        done()
      }),
    )
    socket.on('error', () => {})
    socket.on('connect', () => {
      // Before the server's session can start: the base of lower time bounds (the 101's
      // arrival, `openedAt`, can be read late by a busy test process).
      state.requestedAt = Date.now()
      socket.write(
        `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n${headers}\r\n`,
      )
    })
    socket.on('data', (chunk) => {
      buffer = Buffer.concat([buffer, chunk])
      if (!headDone) {
        const end = buffer.indexOf('\r\n\r\n')
        if (end < 0) return
        state.head = buffer.subarray(0, end).toString('latin1')
        state.status = Number(/^HTTP\/1\.1 (\d{3})/.exec(state.head)?.[1])
        buffer = buffer.subarray(end + 4)
        headDone = true
        state.openedAt = Date.now()
        resolve(state)
      }
      for (;;) {
        if (buffer.length < 2) break
        let len = buffer[1] & 0x7f
        let offset = 2
        if (len === 126) {
          if (buffer.length < 4) break
          len = buffer.readUInt16BE(2)
          offset = 4
        } else if (len === 127) {
          if (buffer.length < 10) break
          len = Number(buffer.readBigUInt64BE(2))
          offset = 10
        }
        if (buffer[1] & 0x80) offset += 4
        if (buffer.length < offset + len) break
        state.frames.push({ opcode: buffer[0] & 0x0f, fin: Boolean(buffer[0] & 0x80), payload: buffer.subarray(offset, offset + len), at: Date.now() })
        buffer = buffer.subarray(offset + len)
      }
    })
  })
}

/**
 * Serves `script` as the page at / of `app`, with a POST /report the page sends what it saw to,
 * mounts `app` on a new server and opens the page in headless Chromium (declare the test with
 * needs(chromiumTool, test)). Resolves { server, reported, running }: `reported()` is the page's
 * report once it came; both throw once the browser failed (could not start, exited early, or ran
 * past `timeout`), so a wait on them ends with the reason instead of running out.
 */
export async function openInChromium(t, app, script, { timeout = 60_000, server: serverOptions = {}, flags = [] } = {}) {
  let report
  app.get('/', () => new Response(`<!doctype html><script>${script}</script>`, { headers: { 'content-type': 'text/html' } }))
  app.post('/report', async (req) => {
    report = await req.json()
    return new Response(null, { status: 204 })
  })
  const server = new Server(serverOptions)
  server.mount('/', app)
  const { url } = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  const browser = chromium(t, `${url}/`, { timeout, flags, done: () => report !== undefined })
  const running = () => {
    if (report === undefined && browser.problem) throw new Error(browser.problem)
    return true
  }
  return { server, reported: () => running() && report, running }
}

/**
 * Opens `url` in headless Chromium until the test ends or `timeout` passes, whichever is first;
 * then the whole process group is killed. Returns { problem }: why the browser failed, if it did.
 */
function chromium(t, url, { timeout, flags = [], done }) {
  if (chromiumTool.missing) throw new Error(chromiumTool.missing)
  const state = { problem: undefined }
  const profile = mkdtempSync(join(tmpdir(), 'floodgate-chromium-'))
  const browser = spawn(
    chromiumTool.path,
    ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run', `--user-data-dir=${profile}`, ...flags, url],
    { stdio: ['ignore', 'ignore', 'pipe'], detached: process.platform !== 'win32' },
  )
  let stderr = ''
  browser.stderr.on('data', (data) => (stderr = (stderr + data).slice(-1500)))
  let stopping = false
  const exited = new Promise((resolve) => {
    browser.on('error', (error) => {
      state.problem ??= `could not run ${chromiumTool.path}: ${error.message}`
      resolve()
    })
    browser.on('exit', (code, signal) => {
      if (!stopping && !done()) state.problem ??= `${chromiumTool.path} exited (${signal ?? `code ${code}`}) before the page reported${stderr ? `; its stderr ends:\n${stderr}` : ''}`
      resolve()
    })
  })
  const kill = () => {
    stopping = true
    if (browser.pid === undefined) return // it never started
    if (process.platform === 'win32') spawnSync('taskkill', ['/pid', String(browser.pid), '/T', '/F'], { stdio: 'ignore' })
    else {
      try {
        process.kill(-browser.pid, 'SIGKILL')
      } catch {}
    }
  }
  const timer = setTimeout(() => {
    if (!done()) state.problem ??= `${chromiumTool.path} was killed after ${timeout / 1000} s without the page reporting`
    kill()
  }, timeout)
  timer.unref()
  t.teardown(async () => {
    clearTimeout(timer)
    kill()
    await Promise.race([exited, sleep(10_000)])
    try {
      rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 })
    } catch {
      // A helper that outlived the group kill may still hold it; a stray temp folder is harmless.
    }
  })
  return state
}

/** Resolves what `state.closing` resolves (a wsOpen or rawWebSocket state); throws after `ms`. */
export function closedWithin(state, ms = 10_000) {
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`not closed within ${ms} ms`)), ms)
  })
  return Promise.race([state.closing, timeout]).finally(() => clearTimeout(timer))
}

// ---- Redis: a redis-server of the test's own on a free loopback port (never a system service) ----

/** redis-server (Debian's redis-server package), for the cluster tests. */
export const redisTool = findTool({
  name: 'redis-server',
  env: ['FLOODGATE_REDIS_SERVER'],
  names: ['redis-server'],
  install: 'apt-get install redis-server, or set FLOODGATE_REDIS_SERVER to a redis-server binary',
})

/** A TCP port nobody listens on at the moment, on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer()
    probe.on('error', reject)
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address()
      probe.close(() => resolve(port))
    })
  })
}

/**
 * Starts redis-server on a free loopback port, in memory only (no RDB, no AOF), killed at
 * teardown. Resolves { port, url, pid(), pause(), resume(), kill(), start(), command(...args) }:
 * `pause`/`resume` send SIGSTOP/SIGCONT, `kill` ends it (SIGKILL), `start` starts a new, empty
 * one on the same port, `command` runs one command over a short-lived socket (RESP) and resolves
 * its reply (a number, string, array or null).
 */
export async function startRedis(t) {
  if (redisTool.missing) throw new Error(redisTool.missing)
  const port = await freePort()
  let child
  const start = async () => {
    child = spawn(
      redisTool.path,
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no', '--loglevel', 'warning'],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    )
    let stderr = ''
    child.stderr.on('data', (d) => (stderr += d))
    const up = await eventually(async () => (await redisCommand(port, ['PING']).catch(() => undefined)) === 'PONG', { timeout: 10_000, interval: 50 })
    if (!up) throw new Error(`redis-server did not answer on port ${port}${stderr ? `: ${stderr}` : ''}`)
  }
  await start()
  t.teardown(() => {
    try {
      process.kill(child.pid, 'SIGCONT')
    } catch {}
    child.kill('SIGKILL')
  })
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    pid: () => child.pid,
    pause: () => process.kill(child.pid, 'SIGSTOP'),
    resume: () => process.kill(child.pid, 'SIGCONT'),
    kill: () =>
      new Promise((resolve) => {
        child.once('exit', resolve)
        child.kill('SIGKILL')
      }),
    start,
    command: (...args) => redisCommand(port, args),
  }
}

/** One Redis command over a fresh socket: the RESP reply, parsed (errors reject). */
export function redisCommand(port, args, { timeout = 5_000 } = {}) {
  const payload = `*${args.length}\r\n` + args.map((arg) => `$${Buffer.byteLength(String(arg))}\r\n${arg}\r\n`).join('')
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1' })
    let buffer = Buffer.alloc(0)
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new Error(`redis ${args[0]}: no reply within ${timeout} ms`))
    }, timeout)
    const done = (fn, value) => {
      clearTimeout(timer)
      socket.destroy()
      fn(value)
    }
    socket.on('error', (error) => done(reject, error))
    socket.on('connect', () => socket.write(payload))
    socket.on('data', (chunk) => {
      buffer = Buffer.concat([buffer, chunk])
      const parsed = parseResp(buffer, 0)
      if (!parsed) return
      if (parsed.value instanceof Error) done(reject, parsed.value)
      else done(resolve, parsed.value)
    })
  })
}

/** Parses one RESP2 value at `at`: { value, end }, or undefined when incomplete. */
function parseResp(buffer, at) {
  const line = buffer.indexOf('\r\n', at)
  if (line < 0) return undefined
  const type = String.fromCharCode(buffer[at])
  const text = buffer.subarray(at + 1, line).toString()
  const next = line + 2
  if (type === '+') return { value: text, end: next }
  if (type === '-') return { value: new Error(text), end: next }
  if (type === ':') return { value: Number(text), end: next }
  if (type === '$') {
    const length = Number(text)
    if (length < 0) return { value: null, end: next }
    if (buffer.length < next + length + 2) return undefined
    return { value: buffer.subarray(next, next + length).toString(), end: next + length + 2 }
  }
  if (type === '*') {
    const count = Number(text)
    if (count < 0) return { value: null, end: next }
    const values = []
    let end = next
    for (let i = 0; i < count; i++) {
      const item = parseResp(buffer, end)
      if (!item) return undefined
      values.push(item.value)
      end = item.end
    }
    return { value: values, end }
  }
  throw new Error(`unexpected RESP type ${type}`)
}
