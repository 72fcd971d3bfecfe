/**
 * The live dashboard (`server.dashboard()`): one page (HTML, CSS and script shipped in
 * `dashboard/`, inlined into one document) and its event stream, both behind `authenticate`.
 *
 * One `DashboardFeed` per server takes a frame a second from the native core (gauges, rates
 * and latency quantiles of the last second, the top offenders: its cost is the number of
 * series, never of connections), keeps the last five minutes for a page that opens, and hands
 * the same JSON text to every open stream.
 */
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { isIP } from 'node:net'
import { join } from 'node:path'
import { optionError } from './options'
import { StreamingResponse, type HandlerContext } from './results'
import { StreamingApp } from './streaming-app'

/** What `authenticate` may answer: allow (`true`), refuse with `401` (`false`), or a response of its own. */
export type DashboardVerdict = boolean | Response

export interface DashboardOptions {
  /**
   * Who may see the page and its event stream. `true` lets the request through; `false` (or
   * nothing) answers `401` with `WWW-Authenticate: Basic realm="floodgate"`, so a browser asks
   * for a user name and password; a `Response` is sent as it is (a `403`, a redirect to a login
   * page). The stream's URL carries the page's query string, so a `?token=` works for both.
   * Without `authenticate`, only loopback clients (after `trustProxy`) whose request carries no
   * `Forwarded` / `X-Forwarded-For` header are let in; others get `403`.
   */
  authenticate?: (req: Request, context: HandlerContext) => DashboardVerdict | Promise<DashboardVerdict>
}

/** Frames kept for a page that opens: five minutes at one a second. */
const HISTORY = 300
/** Clients listed in each frame's top offenders. */
const TOP_OFFENDERS = 10
/** Frames queued for a viewer that reads slower than they come; older ones are dropped. */
const VIEWER_QUEUE = 30
const SAMPLE_MS = 1000

/** The frames of one server, sampled from the first dashboard request until `close`. */
export class DashboardFeed {
  readonly #frames: string[] = []
  readonly #viewers = new Set<Viewer>()
  #timer: NodeJS.Timeout | undefined
  #stopped = false

  constructor(readonly sample: (top: number) => string) {}

  /** Starts sampling (once); a no-op after `stop`. */
  #start(): void {
    if (this.#timer || this.#stopped) return
    this.#take()
    this.#timer = setInterval(() => this.#take(), SAMPLE_MS)
    this.#timer.unref()
  }

  #take(): void {
    let frame: string
    try {
      frame = this.sample(TOP_OFFENDERS)
    } catch {
      this.stop() // the server is gone
      return
    }
    this.#frames.push(frame)
    if (this.#frames.length > HISTORY) this.#frames.shift()
    const message = `event: frame\ndata: ${frame}\n\n`
    for (const viewer of this.#viewers) viewer.push(message)
  }

  /** One viewer's stream: the history first, then a frame a second until it leaves or `stop`. */
  async *stream(): AsyncGenerator<string> {
    this.#start()
    const viewer = new Viewer()
    if (this.#stopped) return
    this.#viewers.add(viewer)
    try {
      yield `retry: 2000\nevent: history\ndata: [${this.#frames.join(',')}]\n\n`
      for (;;) {
        const message = await viewer.next()
        if (message === undefined) return
        yield message
      }
    } finally {
      this.#viewers.delete(viewer)
    }
  }

  /** Stops sampling and ends every stream (`server.close()` would otherwise wait for them). */
  stop(): void {
    this.#stopped = true
    clearInterval(this.#timer)
    for (const viewer of this.#viewers) viewer.end()
    this.#viewers.clear()
  }
}

/** The frames waiting for one stream; `undefined` from `next` once ended. */
class Viewer {
  readonly #queue: string[] = []
  #wake: (() => void) | undefined
  #ended = false

  push(message: string): void {
    this.#queue.push(message)
    if (this.#queue.length > VIEWER_QUEUE) this.#queue.shift()
    this.#wake?.()
  }

  end(): void {
    this.#ended = true
    this.#wake?.()
  }

  async next(): Promise<string | undefined> {
    while (this.#queue.length === 0 && !this.#ended) {
      await new Promise<void>((resolve) => (this.#wake = resolve))
      this.#wake = undefined
    }
    return this.#queue.shift()
  }
}

/** The page, its CSS and script inlined, with the CSP hashes that allow exactly those. */
interface Page {
  html: string
  csp: string
}
let page: Page | undefined

function loadPage(): Page {
  const read = (name: string) => readFileSync(join(__dirname, 'dashboard', name), 'utf8')
  const css = read('page.css')
  const script = read('page.js')
  const hash = (text: string) => `'sha256-${createHash('sha256').update(text).digest('base64')}'`
  const html = read('page.html')
    .replace('<!-- style -->', () => `<style>${css}</style>`)
    .replace('<!-- script -->', () => `<script>${script}</script>`)
  const csp = [
    "default-src 'none'",
    `style-src ${hash(css)}`,
    `script-src ${hash(script)}`,
    "connect-src 'self'",
    "img-src 'self' data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ')
  return { html, csp }
}

function isLoopback(address: string): boolean {
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address
  if (isIP(v4) === 4) return v4.startsWith('127.')
  return address === '::1'
}

/** The default without `authenticate`: loopback clients that did not come through a proxy. */
function localOnly(req: Request, { client }: HandlerContext): DashboardVerdict {
  if (isLoopback(client) && !req.headers.has('forwarded') && !req.headers.has('x-forwarded-for')) return true
  return new Response('The floodgate dashboard answers loopback clients only; pass authenticate to dashboard() to open it to others.\n', {
    status: 403,
    headers: { 'content-type': 'text/plain; charset=utf-8' },
  })
}

const unauthorized = () =>
  new Response('Unauthorized\n', {
    status: 401,
    headers: { 'content-type': 'text/plain; charset=utf-8', 'www-authenticate': 'Basic realm="floodgate", charset="UTF-8"' },
  })

/**
 * The dashboard's app: `GET /` the page, `GET /events` the stream (`text/event-stream`: a
 * `history` event with the frames kept, then a `frame` event a second).
 */
export function dashboardApp(options: DashboardOptions, feed: () => DashboardFeed): StreamingApp {
  if (typeof options !== 'object' || options === null) throw optionError('dashboard: options must be an object')
  const { authenticate = localOnly } = options
  if (typeof authenticate !== 'function') throw optionError('dashboard: authenticate must be a function')
  page ??= loadPage()
  const { html, csp } = page
  const guarded = (serve: (req: Request) => Response | StreamingResponse) => async (req: Request, context: HandlerContext) => {
    const verdict = await authenticate(req, context)
    if (verdict instanceof Response) return verdict
    if (verdict !== true) return unauthorized()
    return serve(req)
  }
  // The stream is endless by design: no download deadline (the page reconnects if cut anyway).
  return new StreamingApp({ downloadTimeout: 0 })
    .get(
      '/',
      guarded(
        () =>
          new Response(html, {
            headers: {
              'content-type': 'text/html; charset=utf-8',
              'cache-control': 'no-store',
              'content-security-policy': csp,
              'x-content-type-options': 'nosniff',
              'referrer-policy': 'no-referrer',
            },
          }),
      ),
    )
    .get(
      '/events',
      guarded(
        () =>
          new StreamingResponse(feed().stream(), {
            mediaType: 'text/event-stream',
            headers: { 'cache-control': 'no-store', 'x-accel-buffering': 'no' },
          }),
      ),
    )
}
