// Options and errors: the TypeScript option types and the Rust config list the same options;
// handler ids are no option; every option is checked where it is given; errors carry codes.
import test from 'ava'
import { createRequire } from 'node:module'
import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
const { Server, StreamingApp } = require('../index.js')
const root = fileURLToPath(new URL('..', import.meta.url))

/** Property names of each `export interface` in a .d.ts file, by interface name. */
function interfaces(path) {
  const found = {}
  let current
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const start = /^export interface (\w+)/.exec(line)
    if (start) {
      current = found[start[1]] = []
      continue
    }
    if (line.startsWith('}')) current = undefined
    // Members are indented once (four spaces, as tsc writes them); JSDoc lines start with `*`.
    const member = current && /^ {4}(?:readonly )?([A-Za-z_$][\w$]*)\??:/.exec(line)
    if (member) current.push(member[1])
  }
  return found
}

/** camelCase names of the `pub` fields of each `pub struct` in a Rust file, by struct name. */
function structs(path) {
  const found = {}
  const source = readFileSync(path, 'utf8')
  for (const [, name, body] of source.matchAll(/^pub struct (\w+) \{\n([\s\S]*?)^\}/gm)) {
    found[name] = [...body.matchAll(/^\s*pub (\w+)\s*:/gm)].map(([, field]) => field.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase()))
  }
  return found
}

const configPath = ['crates/floodgate_core/src/config/mod.rs', 'crates/floodgate_core/src/config.rs']
  .map((path) => `${root}${path}`)
  .find((path) => existsSync(path))

// TS interface → Rust struct, and the options that exist only in JS (functions, and what
// `new Server` applies itself); they never reach the native core.
const PAIRS = [
  ['ServerOptions', 'ServerConfig', ['overrideGlobalResponse']],
  ['StreamingOptions', 'StreamingConfig', ['identify']],
  ['FilesOptions', 'FilesConfig', []],
  ['UploadsOptions', 'UploadsConfig', ['onUpload']],
  ['MultipartOptions', 'MultipartConfig', []],
  ['ResumableOptions', 'ResumableConfig', []],
  ['SseOptions', 'SseConfig', ['authenticate', 'topics', 'snapshot', 'onClose']],
  ['WebSocketRoute', 'WsConfig', ['authenticate', 'open', 'message', 'close', 'telemetry', 'batch', 'selectProtocol']],
]

test('the TypeScript option types and the Rust config list the same options', (t) => {
  t.truthy(configPath, 'crates/floodgate_core/src/config.rs or config/mod.rs exists')
  const ts = interfaces(`${root}options.d.ts`)
  const rust = structs(configPath)
  for (const [tsName, rustName, jsOnly] of PAIRS) {
    t.truthy(ts[tsName], `options.d.ts has ${tsName}`)
    t.truthy(rust[rustName], `the config has ${rustName}`)
    if (!ts[tsName] || !rust[rustName]) continue
    for (const name of jsOnly) t.true(ts[tsName].includes(name), `${tsName}.${name} (JS-only) is still an option`)
    const tsNative = ts[tsName].filter((name) => !jsOnly.includes(name)).sort()
    t.deepEqual(tsNative, [...rust[rustName]].sort(), `${tsName} (less its JS-only options) and ${rustName}`)
  }
})

test('handler ids are not options: passing one throws a TypeError with ERR_FLOODGATE_OPTION', (t) => {
  const cases = [
    [() => new StreamingApp({ identifyHandler: 0 }), /identifyHandler/],
    [() => new StreamingApp().sse('/events', { topics: ['a'], setupHandler: 0 }), /setupHandler/],
    [() => new StreamingApp().sse('/events', { topics: ['a'], snapshotHandler: 1 }), /snapshotHandler/],
    [() => new StreamingApp().sse('/events', { topics: ['a'], closeHandler: 1 }), /closeHandler/],
    [() => new StreamingApp().ws('/ws', { route: 0 }), /route/],
    [() => new StreamingApp().ws('/ws', { authenticateHandler: 0 }), /authenticateHandler/],
    [() => new StreamingApp().ws('/ws', { jsEvents: true }), /jsEvents/],
  ]
  for (const [make, message] of cases) {
    t.throws(make, { instanceOf: TypeError, code: 'ERR_FLOODGATE_OPTION', message })
  }
})

test('SSE options are checked when the route is added, not at listen', (t) => {
  const app = new StreamingApp()
  t.throws(() => app.sse('/events', { topics: ['a'], queueEvents: 0 }), {
    instanceOf: TypeError,
    code: 'ERR_FLOODGATE_OPTION',
    message: /queueEvents/,
  })
  t.throws(() => app.sse('/events', { topics: ['a'], queueBytes: 'lots' }), { instanceOf: TypeError, code: 'ERR_FLOODGATE_OPTION', message: /queueBytes/ })
  t.throws(() => app.sse('/events', { topics: ['a'], overflow: 'sideways' }), { instanceOf: TypeError, code: 'ERR_FLOODGATE_OPTION', message: /overflow/ })
  t.throws(() => app.sse('/events', { topics: 'a' }), { instanceOf: TypeError, code: 'ERR_FLOODGATE_OPTION', message: /topics/ })
  t.notThrows(() =>
    app.sse('/events', { topics: ['a'], queueEvents: 16, queueBytes: '64kb', overflow: 'close', retry: 1000, snapshot: () => ({}), onClose() {} }),
  )
})

test('a port in use: listen rejects with EADDRINUSE, and the server can listen elsewhere after', async (t) => {
  const first = new Server()
  first.mount('/', () => 'first')
  const { port } = await first.listen({ port: 0 })
  t.teardown(() => first.close({ drain: 0 }))
  const second = new Server()
  second.mount('/', () => 'second')
  const error = await t.throwsAsync(second.listen({ port }))
  t.is(error.code, 'EADDRINUSE')
  const other = await second.listen({ port: 0 })
  t.teardown(() => second.close({ drain: 0 }))
  t.not(other.port, port)
  t.is(await (await fetch(`${other.url}/x`)).text(), 'second')
})

test('overrideGlobalResponse is checked in JS and never reaches the native core', async (t) => {
  t.throws(() => new Server({ overrideGlobalResponse: 'yes' }), {
    instanceOf: TypeError,
    code: 'ERR_FLOODGATE_OPTION',
    message: /overrideGlobalResponse/,
  })
  const server = new Server({ overrideGlobalResponse: false })
  t.false(server.options.overrideGlobalResponse, 'kept in server.options as given')
  server.mount('/', () => 'ok')
  const { url } = await server.listen({ port: 0 })
  t.teardown(() => server.close({ drain: 0 }))
  t.is(await (await fetch(`${url}/`)).text(), 'ok')
})

test('errors thrown by JS carry their codes', async (t) => {
  const option = { instanceOf: TypeError, code: 'ERR_FLOODGATE_OPTION' }
  t.throws(() => new Server({ maxConections: 1 }), { ...option, message: /maxConections/ })
  t.throws(() => new Server(5), { ...option, message: /options must be an object/ })
  t.throws(() => new StreamingApp({ chunkSize: '1b' }), { ...option, message: /chunkSize/ })
  t.throws(() => new StreamingApp({ identify: 'me' }), { ...option, message: /identify/ })
  t.throws(() => new StreamingApp().files('f', { root }), { ...option, message: /prefix/ })
  t.throws(() => new StreamingApp().ws('/ws', { open: 1 }), { ...option, message: /open/ })
  t.throws(() => new Server().mount('/x', {}), { ...option, message: /handler/ })
  await t.throwsAsync(new Server().listen({ port: 70000 }), { ...option, message: /port/ })

  const server = new Server()
  t.throws(() => server.publish('a', 'x'), { code: 'ERR_FLOODGATE_NOT_LISTENING' })
  t.throws(() => server.stats(), { code: 'ERR_FLOODGATE_NOT_LISTENING' })
  await server.listen({ port: 0 })
  t.teardown(() => server.close({ drain: 0 }))
  t.throws(() => server.publish('a.*', 'x'), { ...option, message: /topic/ })
  t.throws(() => server.mount('/late', () => ''), { code: 'ERR_FLOODGATE_STATE', message: /already listening/ })
  await t.throwsAsync(server.listen({ port: 0 }), { code: 'ERR_FLOODGATE_STATE' })
})
