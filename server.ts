/**
 * `Server`: owns the listening socket (in Rust), the handler and WebSocket bridges, and the
 * mount table; at `listen` it hands the whole spec to the native core in one call.
 */
import { EventEmitter } from 'node:events'
import type * as Native from './binding'
import { HandlerBridge } from './bridge'
import { DashboardFeed, dashboardApp, type DashboardOptions } from './dashboard'
import { loadNative } from './loader'
import {
  ERR_NOT_LISTENING,
  ERR_STATE,
  checkHandler,
  checkPrefix,
  coded,
  fromNative,
  optionError,
  serverOptions,
  validated,
  type AddressInfo,
  type BanEntry,
  type HandlerMountOptions,
  type ListenOptions,
  type AccessLogEntry,
  type RejectEvent,
  type ServerOptions,
  type Stats,
  type TlsOptions,
} from './options'
import { installLightResponse } from './response'
import type { Handler } from './results'
import { StreamingApp } from './streaming-app'
import { WebSocketBridge } from './ws'

const native = loadNative()

const notListening = (what: string) => coded(new Error(`${what}: the server is not listening`), ERR_NOT_LISTENING)
const alreadyListening = (what: string) => coded(new Error(`${what}: the server is already listening`), ERR_STATE)

/**
 * Owns the listening socket; apps are mounted under path prefixes, longest prefix wins.
 * Emits `error` with the cause when a JS handler throws (logged when nobody listens), and
 * `reject` with a `RejectEvent` for each refusal the protections make (at most
 * `rejectEventsPerSecond`).
 */
export class Server extends EventEmitter {
  readonly options: ServerOptions
  /** `options` without the JS-only ones: what the native core gets. */
  readonly #nativeOptions: Omit<ServerOptions, 'overrideGlobalResponse'>
  readonly #mounts: { prefix: string; app: StreamingApp }[] = []
  readonly #bridge = new HandlerBridge((error) => this.#reportError(error))
  readonly #ws = new WebSocketBridge((error) => this.#reportError(error))
  #native: Native.NativeServer | undefined
  #listening = false
  #closing: Promise<void> | undefined
  /** The dashboard's frames, sampled from its first request until `close`. */
  #feed: DashboardFeed | undefined
  readonly #dashboards = new WeakSet<StreamingApp>()
  // The native server lives on Rust threads, which do not keep Node's event loop alive the way a
  // listening `net.Server` does; this timer is that reference while the server is open.
  #keepAlive: NodeJS.Timeout | undefined

  constructor(options: ServerOptions = {}) {
    super()
    const checked = serverOptions(options)
    this.options = checked.options
    this.#nativeOptions = checked.native
    if (checked.overrideGlobalResponse) installLightResponse()
  }

  // One native call per batch of refusals; each reaches `reject` listeners as its own event.
  #onRejects(events: RejectEvent[]): void {
    if (this.listenerCount('reject') === 0) return
    for (const event of events) {
      try {
        this.emit('reject', event)
      } catch (error) {
        this.#reportError(error)
      }
    }
  }

  // One native call per batch of access log lines (newline-separated JSON), one call per entry.
  #onAccessLines(accessLog: (entry: AccessLogEntry) => void, lines: string): void {
    let start = 0
    for (let end = lines.indexOf('\n'); end !== -1; start = end + 1, end = lines.indexOf('\n', start)) {
      try {
        accessLog(JSON.parse(lines.slice(start, end)) as AccessLogEntry)
      } catch (error) {
        this.#reportError(error)
      }
    }
  }

  /**
   * Reopens the `accessLog` file at its path, for log rotation: after `logrotate` (or anyone)
   * renamed it, lines logged from now on go to a new file at the path, none lost between. Call
   * it on `SIGHUP`: `process.on('SIGHUP', () => server.reopenLogs())`. Nothing to do for
   * `'stdout'` or a function. Throws when the file cannot be opened (the old one stays).
   */
  reopenLogs(): void {
    if (!this.#native) throw notListening('reopenLogs')
    try {
      this.#native.reopenLogs()
    } catch (error) {
      throw fromNative(error)
    }
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
    if (this.#listening) throw alreadyListening('mount')
    if (!(app instanceof StreamingApp)) {
      const handler = checkHandler(app, 'mount')
      app = new StreamingApp({ rateLimitRequests: 0, rateLimitBandwidth: 0, ...options }).all('/*', handler)
    }
    this.#mounts.push({ prefix, app })
    return this
  }

  /**
   * Starts listening; resolves with the bound address (port 0 picks a free port). A port that
   * cannot be bound rejects with the system's code (`EADDRINUSE`, `EACCES`, `EADDRNOTAVAIL`).
   * `reusePort` (Linux): several processes may listen on one port, each setting it.
   */
  async listen({ port = 0, host = '127.0.0.1', reusePort = false }: ListenOptions = {}): Promise<AddressInfo> {
    if (this.#listening) throw alreadyListening('listen')
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw optionError('listen: port must be an integer from 0 to 65535')
    }
    if (typeof reusePort !== 'boolean') throw optionError('listen: reusePort must be a boolean')
    this.#listening = true
    const spec = {
      options: this.#nativeOptions,
      reusePort,
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
    server.onRejects((events) => this.#onRejects(events as RejectEvent[]))
    const accessLog = this.options.accessLog
    if (typeof accessLog === 'function') server.onAccessLines((lines) => this.#onAccessLines(accessLog, lines))
    this.#bridge.native = server
    if (this.#nativeOptions.tls) this.#bridge.scheme = 'https:'
    this.#ws.native = server
    try {
      const { port: bound, address } = await server.listen(spec, host, port)
      this.#native = server
      const hostForUrl = address.includes(':') ? `[${address}]` : address
      const scheme = this.#nativeOptions.tls ? 'https' : 'http'
      this.#address = { port: bound, address, url: `${scheme}://${hostForUrl}:${bound}` }
    } catch (error) {
      this.#listening = false
      throw fromNative(error)
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
    if (!this.#native) throw notListening('publish')
    const text = typeof data === 'string' ? data : JSON.stringify(data)
    try {
      return this.#native.publish(topic, text, event, id)
    } catch (error) {
      throw optionError((error as Error).message)
    }
  }

  /**
   * Replaces the certificates (the whole `tls` option) for new handshakes, without dropping
   * open connections: they keep the certificate they started with. Throws a `TypeError` for a
   * bad certificate or key (the old ones stay), and before `listen` or on a server started
   * without `tls`.
   */
  setTls(tls: TlsOptions): void {
    if (!this.#native) throw notListening('setTls')
    if (!this.#nativeOptions.tls) throw coded(new Error('setTls: the server was started without tls'), ERR_STATE)
    try {
      this.#native.setTls(validated('server', { tls }, 'Server.setTls').tls)
    } catch (error) {
      throw fromNative(error)
    }
  }

  /** Live counters: connections, bytes, and rejections by reason. */
  stats(): Stats {
    if (!this.#native) throw notListening('stats')
    return this.#native.stats() as Stats
  }

  /** The bans in force (the `ban` option), most recently banned first. */
  bans(): BanEntry[] {
    if (!this.#native) throw notListening('bans')
    return this.#native.bans() as BanEntry[]
  }

  /**
   * Lifts the ban of `client` — an address (an IPv6 address lifts its /64), an IPv6 `/64`, or
   * `user:<id>` — and forgets its counted refusals. Returns whether a ban was in force; a
   * `TypeError` for text that names none of these.
   */
  unban(client: string): boolean {
    if (!this.#native) throw notListening('unban')
    if (typeof client !== 'string') throw optionError('unban: client must be a string')
    try {
      return this.#native.unban(client)
    } catch (error) {
      throw fromNative(error)
    }
  }

  /**
   * Counters, gauges and histograms (request duration, time to first byte and response bytes
   * per app, WebSocket message sizes, event-stream queue depth) in the Prometheus text format
   * (0.0.4), or OpenMetrics with `{ openmetrics: true }`. `metricsHandler()` serves them.
   */
  metrics({ openmetrics = false }: { openmetrics?: boolean } = {}): string {
    if (!this.#native) throw notListening('metrics')
    return this.#native.prometheus(openmetrics === true)
  }

  /**
   * A handler for a scrape endpoint: `server.mount('/metrics', server.metricsHandler())`.
   * Answers OpenMetrics to a scraper that accepts it (Prometheus does), else the Prometheus
   * text format. The text is built in Rust; its cost is the number of series, not of clients.
   */
  metricsHandler(): (req: Request) => Response {
    return (req) => {
      const openmetrics = (req.headers.get('accept') ?? '').includes('application/openmetrics-text')
      const text = this.metrics({ openmetrics })
      const type = openmetrics ? 'application/openmetrics-text; version=1.0.0; charset=utf-8' : 'text/plain; version=0.0.4; charset=utf-8'
      return new Response(text, { headers: { 'content-type': type } })
    }
  }

  /**
   * The live dashboard: `server.mount('/_floodgate', server.dashboard({ authenticate }))`
   * serves a page that shows connections, streams, sockets, bandwidth, requests/s, refusals
   * by reason, the top offenders and p50 / p99 latency, live through its event stream
   * (`/events` under the mount). Without `authenticate`, loopback clients only.
   */
  dashboard(options: DashboardOptions = {}): StreamingApp {
    const app = dashboardApp(options, () => {
      if (!this.#native) throw notListening('dashboard')
      const server = this.#native
      // The dashboards' own mounts stay out of the latency (their streams last minutes).
      const own = this.#mounts.filter((mount) => this.#dashboards.has(mount.app)).map((mount) => mount.prefix)
      return (this.#feed ??= new DashboardFeed((top) => server.dashboardFrame(top, own)))
    })
    this.#dashboards.add(app)
    return app
  }

  /**
   * Stops accepting; in-flight requests get up to `drain` ms (default 30s) to finish, then the
   * rest are aborted. Calling it again returns the same promise.
   */
  close({ drain = 30_000 }: { drain?: number } = {}): Promise<void> {
    if (!this.#closing) {
      this.#feed?.stop()
      const server = this.#native
      this.#closing = (server ? server.close(Math.max(0, Math.floor(drain))) : Promise.resolve()).finally(() => {
        clearInterval(this.#keepAlive)
        this.#keepAlive = undefined
      })
    }
    return this.#closing
  }
}
