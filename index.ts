/**
 * floodgate's TypeScript API: a `Server` owning the listening socket, `StreamingApp`s mounted
 * under path prefixes and served by Rust. Options are validated by the native core (one source
 * of defaults); a wrong option throws a `TypeError` naming it, at construction.
 */
import { EventEmitter } from 'node:events'
import type * as Native from './binding'
import { loadNative } from './loader'
import { HandlerBridge, type Handler } from './handlers'
import { installLightResponse } from './response'
import { WebSocketBridge, nativeRouteOptions, type WebSocketRoute } from './ws'

export { StreamingResponse, FileResponse } from './handlers'
export type { Handler, FetchHandler, HandlerContext, HandlerResult, StreamingInit, FileInit } from './handlers'
export { fromNodeHandler } from './node-adapter'
export { FastResponse } from './response'
export { ServerWebSocket } from './ws'
export type { WebSocketRoute, WebSocketMessage, WebSocketData } from './ws'

const native = loadNative()

/** A size in bytes, or a string such as `'64kb'`, `'100mb'`. */
export type Size = number | string
/** A duration in milliseconds, or a string such as `'30s'`, `'5m'`, `'250ms'`. */
export type Duration = number | string

export interface ServerOptions {
  /** Concurrent TCP connections per client address (IPv6: per /64); 0 disables. Default 100. */
  maxConnectionsPerIp?: number
  /** The whole request head must arrive within this (slowloris). Default 10s. */
  headerTimeout?: Duration
  /** Idle keep-alive connections close after this. Default 5s. */
  keepAliveTimeout?: Duration
  /** Request line plus headers; larger heads get 431. Default 16kb. */
  maxHeaderSize?: Size
  /** CIDRs or addresses whose X-Forwarded-For / Forwarded headers are believed. Default []. */
  trustProxy?: string[]
  /** Accept cleartext HTTP/2 (prior knowledge) beside HTTP/1.1. Default false. */
  http2?: boolean
  /** Concurrent streams per HTTP/2 connection. Default 100. */
  http2MaxConcurrentStreams?: number
  /**
   * Replace `globalThis.Response` with floodgate's light `Response` (`FastResponse`), which
   * handlers build and floodgate sends without undici's per-response `Headers` and stream.
   * It behaves as the real class (`instanceof` holds both ways). Default true.
   */
  overrideGlobalResponse?: boolean
}

export interface StreamingOptions {
  /** Bytes read and written per step; the largest shaping burst. Default 64kb. */
  chunkSize?: Size
  /** A client that takes no bytes for this long is disconnected. Default 30s. */
  sendTimeout?: Duration
  /** A whole response must be delivered within this; 0 disables. Default 10m. */
  downloadTimeout?: Duration
  /** Bytes per second per connection; 0 disables. Default 10mb. */
  rateLimitBandwidth?: Size
  /** Bytes per second summed over one client's connections; 0 disables. Default 0. */
  perClientBandwidth?: Size
  /** Largest request body: 413 before reading when Content-Length says more. Default 100mb. */
  maxUploadSize?: Size
  /** A whole upload must arrive within this (408). Default 5m. */
  uploadTimeout?: Duration
  /** No body bytes for this long ends an upload (408). Default 30s. */
  readTimeout?: Duration
  /** After `minUploadRateGrace`, uploads averaging less than this per second are cut (408). Default 1kb; 0 disables. */
  minUploadRate?: Size
  /** Default 10s. */
  minUploadRateGrace?: Duration
  /** A comment line keeps a quiet event stream open through proxies this often. Default 15s. */
  sseKeepAlive?: Duration
  /** Event streams one user (or address) may hold; more get 429. Default 10. */
  sseMaxConnectionsPerUser?: number
  /** Event streams the app holds at once; more get 503. Default 10000. */
  sseMaxConnections?: number
  /** Largest WebSocket message (and frame); larger ones close the socket with 1009. Default 1mb. */
  wsMaxMessageSize?: Size
  /** No message from the client this long closes the socket (1000, "Idle timeout"); 0 disables. Default 60s. */
  wsIdleTimeout?: Duration
  /** Whether the client's pings and pongs count as activity for `wsIdleTimeout` (else only messages do). Default false. */
  wsIdleCountsPings?: boolean
  /** WebSockets one user (or, when anonymous, one address) may hold; more get 429. 0: no cap. Default 10. */
  wsMaxConnectionsPerUser?: number
  /** WebSockets one client address (IPv6: /64) may hold; more get 429. 0: no cap. Default 100. */
  wsMaxConnectionsPerIp?: number
  /** WebSockets the app holds at once; more get 503. Default 10000. */
  wsMaxConnections?: number
  /** Messages per second one socket may send (burst: a second's worth); over it: 1008 or a pause. 0: no cap. Default 100. */
  wsMaxMessagesPerSecond?: number
  /** Message bytes per second one socket may send; 0: no cap. Default 0. */
  wsMaxBytesPerSecond?: Size
  /** The server pings each socket this often; 0 disables. Default 30s. */
  wsPingInterval?: Duration
  /** A ping unanswered this long drops the connection (dead peer). Default 10s. */
  wsPongTimeout?: Duration
  /** Bytes per second read from one connection's body (TCP backpressure); 0 disables. Default 0. */
  rateLimitUploadBandwidth?: Size
  /** Bytes per second read summed over one client's connections; 0 disables. Default 0. */
  perClientUploadBandwidth?: Size
  /** Requests per `rateLimitWindow` per client (user id, else address); 0 disables. Default 100. */
  rateLimitRequests?: number
  /** Default 1m. */
  rateLimitWindow?: Duration
  /** A JS handler that has not answered within this gets 503. Default 30s. */
  handlerTimeout?: Duration
  /** JS requests in flight for this app; beyond it 503 + Retry-After without calling JS. Default 1024. */
  maxInflight?: number
  /** Requests allowed at once before the rate applies; 0 means `rateLimitRequests`. Default 0. */
  rateLimitBurst?: number
  /**
   * Names the user behind a request (from a token, a cookie, ...): per-user limits such as
   * `rateLimitRequests` key on it instead of the client address. Return undefined for none.
   * Called once per request, before any limit; keep it cheap.
   */
  identify?: (req: Request) => string | undefined | null | Promise<string | undefined | null>
}

export interface UploadsOptions {
  /** Folder uploads are written to (atomically: temp file, then rename). */
  dir: string
  /** Replace an existing file (default true) or answer 409. */
  overwrite?: boolean
  /** Sync each upload to disk before it appears under its name (default true). */
  fsync?: boolean
}

export interface FilesOptions {
  /** Folder to serve. Nothing outside it is ever served; dotfiles are never served. */
  root: string
  /** `inline` (default) or `attachment` (download with the file's name). */
  disposition?: 'inline' | 'attachment'
  /** `Cache-Control` sent with every file. */
  cacheControl?: string
}

export interface ListenOptions {
  /** Default 0: any free port. */
  port?: number
  /** Default '127.0.0.1'. */
  host?: string
}

export interface AddressInfo {
  port: number
  address: string
  url: string
}

export interface Stats {
  /** Open WebSocket sessions, and messages received from and sent to them. */
  wsConnections: number
  wsMessagesIn: number
  wsMessagesOut: number
  connectionsLive: number
  connectionsTotal: number
  requestsTotal: number
  bytesSent: number
  bytesReceived: number
  /** Refusals and cut-offs by reason: `connection_limit`, `header_timeout`, `send_timeout`, ... */
  rejections: Record<string, number>
}

function validated<T extends object>(kind: string, options: T | undefined, what: string): T {
  const value = options ?? ({} as T)
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new TypeError(`${what}: options must be an object`)
  }
  try {
    native.validateOptions(kind, value)
  } catch (err) {
    throw new TypeError(`${what}: ${(err as Error).message}`)
  }
  return { ...value }
}

function checkPrefix(prefix: unknown, what: string): string {
  if (typeof prefix !== 'string' || !prefix.startsWith('/')) {
    throw new TypeError(`${what}: prefix must be a string starting with '/'`)
  }
  return prefix
}

export type SseUser = string | undefined

export interface SseOptions {
  /**
   * Who opens the stream (from `?token=`, a cookie, ...). Return the user id; return nothing, or
   * throw an error whose `status` is 401 or 403, to refuse the stream. Runs once per connection,
   * before the 200. Without it, streams are anonymous and capped per client address.
   */
  authenticate?: (req: Request) => string | undefined | null | Promise<string | undefined | null>
  /** The topics the stream subscribes to, NATS-style: `attacker.42.>`, `a.*.c`. */
  topics: string[] | ((req: Request, user: SseUser) => string[] | Promise<string[]>)
  /**
   * Sent first, as an event named `snapshot` (an object is sent as JSON). Events published
   * before it is called are covered by it; later ones follow it, none lost, none twice.
   */
  snapshot?: (req: Request, user: SseUser) => unknown
  /** Called exactly once per stream when it ends: `client`, `overflow` or `shutdown`. */
  onClose?: (user: SseUser, reason: 'client' | 'overflow' | 'shutdown') => void
  /** Events queued per connection for a slow reader. Default 256. */
  queueEvents?: number
  /** Bytes queued per connection. Default 1mb. */
  queueBytes?: Size
  /** On a full queue: drop the oldest event (default), drop the new one, or end the stream. */
  overflow?: 'dropOldest' | 'dropNewest' | 'close'
  /** `retry:` (ms) sent when the stream opens. */
  retry?: number
}

/** What the server lends an app when it is turned into a spec. */
interface SpecContext {
  register(handler: Handler): number
  registerWs(route: WebSocketRoute): number
  busSeq(): number
}

type RouteSpec =
  | { kind: 'files'; prefix: string; options: FilesOptions }
  | { kind: 'uploads'; prefix: string; options: UploadsOptions }
  | { kind: 'handler'; method: string | null; path: string; handler: Handler }
  | { kind: 'sse'; prefix: string; options: SseOptions }
  | { kind: 'ws'; prefix: string; options: WebSocketRoute }

function checkHandler(handler: unknown, what: string): Handler {
  const ok =
    typeof handler === 'function' ||
    (typeof handler === 'object' && handler !== null && typeof (handler as { fetch?: unknown }).fetch === 'function')
  if (!ok) throw new TypeError(`${what}: handler must be a function or an object with a fetch method`)
  return handler as Handler
}

/** A group of Rust-served streaming routes sharing one set of limits. */
export class StreamingApp {
  readonly options: Omit<StreamingOptions, 'identify'>
  readonly #routes: RouteSpec[] = []
  readonly #identify: StreamingOptions['identify']

  constructor(options: StreamingOptions = {}) {
    const { identify, ...rest } = (options ?? {}) as StreamingOptions
    if (identify !== undefined && typeof identify !== 'function') {
      throw new TypeError('StreamingApp: identify must be a function')
    }
    this.options = validated('streaming', rest, 'StreamingApp')
    this.#identify = identify
  }

  /** Serves the files under `options.root` at `prefix` (GET/HEAD, Range, ETag, ...). */
  files(prefix: string, options: FilesOptions): this {
    checkPrefix(prefix, 'files')
    this.#routes.push({ kind: 'files', prefix, options: validated('files', options, 'files') })
    return this
  }

  /**
   * Receives raw `PUT`/`POST` bodies at `prefix/<name>` into `options.dir/<name>`: streamed to a
   * temporary file, renamed into place only when complete; answers 201 `{ name, size, sha256 }`.
   */
  uploads(prefix: string, options: UploadsOptions): this {
    checkPrefix(prefix, 'uploads')
    this.#routes.push({ kind: 'uploads', prefix, options: validated('uploads', options, 'uploads') })
    return this
  }

  /**
   * Server-Sent Events at `prefix`: authenticate, subscribe to topics, send a snapshot, then
   * every event `server.publish` sends on a matching topic, with keepalive comments, per-user
   * caps (`sseMaxConnectionsPerUser`) and a bounded queue per connection.
   */
  sse(prefix: string, options: SseOptions): this {
    checkPrefix(prefix, 'sse')
    const { authenticate, topics, snapshot, onClose, ...rest } = options ?? ({} as SseOptions)
    if (typeof topics !== 'function' && !Array.isArray(topics)) {
      throw new TypeError('sse: topics must be an array or a function')
    }
    for (const [name, fn] of Object.entries({ authenticate, snapshot, onClose })) {
      if (fn !== undefined && typeof fn !== 'function') throw new TypeError(`sse: ${name} must be a function`)
    }
    validated('sse', rest, 'sse')
    this.#routes.push({ kind: 'sse', prefix, options })
    return this
  }

  /**
   * Raw WebSockets at `prefix` (and below it): the upgrade, every limit and the fan-out of
   * `server.publish` run in Rust; `open`, `message` and `close` run here, in order per socket.
   */
  ws(prefix: string, route: WebSocketRoute): this {
    checkPrefix(prefix, 'ws')
    if (typeof route !== 'object' || route === null) throw new TypeError('ws: options must be an object')
    for (const name of ['authenticate', 'open', 'message', 'close', 'batch'] as const) {
      if (route[name] !== undefined && typeof route[name] !== 'function') throw new TypeError(`ws: ${name} must be a function`)
    }
    if (route.telemetry && typeof route.batch !== 'function') throw new TypeError('ws: telemetry needs a batch function')
    validated('ws', nativeRouteOptions(route), 'ws')
    this.#routes.push({ kind: 'ws', prefix, options: { ...route } })
    return this
  }

  /** A JS handler for `method` (or any method) at `path` (`:param` segments, trailing `*`). */
  route(method: string | null, path: string, handler: Handler): this {
    checkPrefix(path, 'route')
    this.#routes.push({ kind: 'handler', method, path, handler: checkHandler(handler, 'route') })
    return this
  }

  get(path: string, handler: Handler): this {
    return this.route('GET', path, handler)
  }

  post(path: string, handler: Handler): this {
    return this.route('POST', path, handler)
  }

  put(path: string, handler: Handler): this {
    return this.route('PUT', path, handler)
  }

  delete(path: string, handler: Handler): this {
    return this.route('DELETE', path, handler)
  }

  all(path: string, handler: Handler): this {
    return this.route(null, path, handler)
  }

  /** @internal the JSON spec handed to the native core; handlers become ids. */
  toSpec({ register, registerWs, busSeq }: SpecContext) {
    const routes = this.#routes.map((route) => {
      if (route.kind === 'handler') return { ...route, handler: register(route.handler) }
      if (route.kind === 'ws') return { kind: 'ws', prefix: route.prefix, options: wsSpec(route.options, register, registerWs) }
      if (route.kind === 'sse') return { kind: 'sse', prefix: route.prefix, options: sseSpec(route.options, register, busSeq) }
      return route
    })
    const identify = this.#identify
    if (!identify) return { options: this.options, routes }
    // The answer crosses back as the body of a plain response: the user id, or empty for none.
    const asHandler: Handler = async (req) => {
      const user = await identify(req)
      return user === undefined || user === null ? '' : String(user)
    }
    return { options: { ...this.options, identifyHandler: register(asHandler) }, routes }
  }
}

/** Turns an SSE route's JS functions into handlers whose answers cross back as JSON bodies. */
function sseSpec(options: SseOptions, register: (handler: Handler) => number, busSeq: () => number) {
  const { authenticate, topics, snapshot, onClose, ...rest } = options
  const setup: Handler = async (req) => {
    let user: SseUser
    if (authenticate) {
      try {
        user = (await authenticate(req)) ?? undefined
      } catch (error) {
        const status = (error as { status?: unknown })?.status
        if (status === 401 || status === 403) return new Response(null, { status })
        throw error
      }
      if (user === undefined) return new Response(null, { status: 401 })
    }
    const list = typeof topics === 'function' ? await topics(req, user) : topics
    return Response.json({ user: user ?? null, topics: list })
  }
  const spec: Record<string, unknown> = { ...rest, setupHandler: register(setup) }
  if (snapshot) {
    spec.snapshotHandler = register(async (req, { params }) => {
      // Taken before the snapshot is built: published events up to here are in it.
      const seq = busSeq()
      const value = await snapshot(req, params.user || undefined)
      return Response.json({ seq, data: typeof value === 'string' ? value : JSON.stringify(value) })
    })
  }
  if (onClose) {
    spec.closeHandler = register((_req, { params }) => {
      onClose(params.user || undefined, params.reason as 'client' | 'overflow' | 'shutdown')
      return ''
    })
  }
  return spec
}

/** A WebSocket route's spec: its Rust options, its id in JS, and `authenticate` as a handler. */
function wsSpec(route: WebSocketRoute, register: (handler: Handler) => number, registerWs: (route: WebSocketRoute) => number) {
  const spec: Record<string, unknown> = { ...nativeRouteOptions(route), route: registerWs(route) }
  const { authenticate, open, message, close, batch } = route
  // With no handler to hear them, the route's sockets cost JS nothing (no open/close events).
  spec.jsEvents = Boolean(open || message || close || (route.telemetry && batch))
  if (authenticate) {
    // The answer crosses back as the body of a plain response: the user id, or 401 / 403.
    spec.authenticateHandler = register(async (req) => {
      let user: string | undefined | null
      try {
        user = await authenticate(req)
      } catch (error) {
        const status = (error as { status?: unknown })?.status
        if (status === 401 || status === 403) return new Response(null, { status })
        throw error
      }
      return user === undefined || user === null || user === '' ? new Response(null, { status: 401 }) : String(user)
    })
  }
  return spec
}

/** Options of a JS handler mount (`server.mount('/api', handler, options)`). */
export type HandlerMountOptions = Pick<
  StreamingOptions,
  'maxUploadSize' | 'readTimeout' | 'handlerTimeout' | 'maxInflight' | 'rateLimitRequests' | 'rateLimitWindow' | 'rateLimitBurst' | 'rateLimitBandwidth' | 'sendTimeout'
>

/**
 * Owns the listening socket; apps are mounted under path prefixes, longest prefix wins.
 * Emits `error` with the cause when a JS handler throws (logged when nobody listens).
 */
export class Server extends EventEmitter {
  readonly options: ServerOptions
  readonly #mounts: { prefix: string; app: StreamingApp }[] = []
  readonly #bridge = new HandlerBridge((error) => this.#reportError(error))
  readonly #ws = new WebSocketBridge((error) => this.#reportError(error))
  #native: Native.NativeServer | undefined
  #listening = false
  #closing: Promise<void> | undefined
  // The native server lives on Rust threads, which do not keep Node's event loop alive the way a
  // listening `net.Server` does; this timer is that reference while the server is open.
  #keepAlive: NodeJS.Timeout | undefined

  constructor(options: ServerOptions = {}) {
    super()
    this.options = validated('server', options, 'Server')
    if (this.options.overrideGlobalResponse !== false) installLightResponse()
  }

  #reportError(error: unknown): void {
    if (this.listenerCount('error') > 0) this.emit('error', error)
    else console.error('floodgate: a handler failed:', error)
  }

  /**
   * Mounts a `StreamingApp`, or a JS handler (a fetch-style function or an object with
   * `fetch`, such as a Hono app) at `prefix`; it sees request paths with the prefix stripped.
   * A handler mount has no rate or bandwidth limit unless `options` sets one.
   */
  mount(prefix: string, app: StreamingApp | Handler, options: HandlerMountOptions = {}): this {
    checkPrefix(prefix, 'mount')
    if (this.#listening) throw new Error('mount: the server is already listening')
    if (!(app instanceof StreamingApp)) {
      const handler = checkHandler(app, 'mount')
      app = new StreamingApp({ rateLimitRequests: 0, rateLimitBandwidth: 0, ...options }).all('/*', handler)
    }
    this.#mounts.push({ prefix, app })
    return this
  }

  /** Starts listening; resolves with the bound address (port 0 picks a free port). */
  async listen({ port = 0, host = '127.0.0.1' }: ListenOptions = {}): Promise<AddressInfo> {
    if (this.#listening) throw new Error('listen: the server is already listening')
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new TypeError('listen: port must be an integer from 0 to 65535')
    }
    this.#listening = true
    const spec = {
      options: this.options,
      mounts: this.#mounts.map(({ prefix, app }) => ({
        prefix,
        app: app.toSpec({
          register: (h) => this.#bridge.register(h),
          registerWs: (route) => this.#ws.register(route),
          busSeq: () => this.#native?.busSeq() ?? 0,
        }),
      })),
    }
    const server = new native.NativeServer(this.#bridge.onRequests, this.#bridge.onAborts, this.#ws.onWsEvents)
    this.#bridge.native = server
    this.#ws.native = server
    try {
      const { port: bound, address } = await server.listen(spec, host, port)
      this.#native = server
      const hostForUrl = address.includes(':') ? `[${address}]` : address
      this.#address = { port: bound, address, url: `http://${hostForUrl}:${bound}` }
    } catch (error) {
      this.#listening = false
      throw error
    }
    this.#keepAlive = setInterval(() => {}, 1 << 30)
    return this.#address
  }

  #address: AddressInfo | undefined

  /** The bound address, or undefined before `listen`. */
  address(): AddressInfo | undefined {
    return this.#address
  }

  /**
   * Sends `data` (a string, or any value as JSON) to every event stream and WebSocket subscribed
   * to a pattern matching `topic`; returns how many subscribers it reached.
   */
  publish(topic: string, data: unknown, { event, id }: { event?: string; id?: string } = {}): number {
    if (!this.#native) throw new Error('publish: the server is not listening')
    const text = typeof data === 'string' ? data : JSON.stringify(data)
    try {
      return this.#native.publish(topic, text, event, id)
    } catch (error) {
      throw new TypeError((error as Error).message)
    }
  }

  /** Live counters: connections, bytes, and rejections by reason. */
  stats(): Stats {
    if (!this.#native) throw new Error('stats: the server is not listening')
    return this.#native.stats() as Stats
  }

  /**
   * The same counters in the Prometheus text format, for a metrics endpoint:
   * `server.mount('/metrics', () => new Response(server.metrics(), { headers: { 'content-type': 'text/plain; version=0.0.4' } }))`.
   */
  metrics(): string {
    if (!this.#native) throw new Error('metrics: the server is not listening')
    return this.#native.prometheus()
  }

  /**
   * Stops accepting; in-flight requests get up to `drain` ms (default 30s) to finish, then the
   * rest are aborted. Calling it again returns the same promise.
   */
  close({ drain = 30_000 }: { drain?: number } = {}): Promise<void> {
    if (!this.#closing) {
      const server = this.#native
      this.#closing = (server ? server.close(Math.max(0, Math.floor(drain))) : Promise.resolve()).finally(() => {
        clearInterval(this.#keepAlive)
        this.#keepAlive = undefined
      })
    }
    return this.#closing
  }
}
