/**
 * `StreamingApp`: a group of Rust-served routes sharing one set of limits, recorded in JS as
 * they are added (each checked at once) and turned into the JSON spec the native core reads at
 * `listen` — with every JS function (handlers, SSE and WebSocket callbacks, `identify`)
 * replaced by its id in the bridge.
 */
import {
  checkHandler,
  checkPrefix,
  sseNativeOptions,
  sseOptions,
  streamingOptions,
  validated,
  wsNativeOptions,
  wsRoute,
  type FilesOptions,
  type SseOptions,
  type SseUser,
  type StreamingOptions,
  type UploadedFile,
  type UploadsOptions,
  uploadsOptions,
  type WebSocketRoute,
} from './options'
import type { Handler } from './results'

/** What the server lends an app when it is turned into a spec. */
export interface SpecContext {
  register(handler: Handler): number
  registerWs(route: WebSocketRoute): number
  busSeq(): number
}

type RouteSpec =
  | { kind: 'files'; prefix: string; options: FilesOptions }
  | { kind: 'uploads'; prefix: string; options: Omit<UploadsOptions, 'onUpload'>; onUpload: UploadsOptions['onUpload'] }
  | { kind: 'handler'; method: string | null; path: string; handler: Handler }
  | { kind: 'sse'; prefix: string; options: SseOptions }
  | { kind: 'ws'; prefix: string; options: WebSocketRoute }

/** A group of Rust-served streaming routes sharing one set of limits. */
export class StreamingApp {
  readonly options: Omit<StreamingOptions, 'identify'>
  readonly #routes: RouteSpec[] = []
  readonly #identify: StreamingOptions['identify']

  constructor(options: StreamingOptions = {}) {
    const { native, identify } = streamingOptions(options)
    this.options = native
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
   * A `multipart/form-data` POST to `prefix` itself stores each file part the same way (all of
   * the request's files or none) and answers 201 `{ files, fields }`, or what `onUpload` returns.
   */
  uploads(prefix: string, options: UploadsOptions): this {
    checkPrefix(prefix, 'uploads')
    const { native, onUpload } = uploadsOptions(options)
    this.#routes.push({ kind: 'uploads', prefix, options: native, onUpload })
    return this
  }

  /**
   * Server-Sent Events at `prefix`: authenticate, subscribe to topics, send a snapshot, then
   * every event `server.publish` sends on a matching topic, with keepalive comments, per-user
   * caps (`sseMaxConnectionsPerUser`) and a bounded queue per connection.
   */
  sse(prefix: string, options: SseOptions): this {
    checkPrefix(prefix, 'sse')
    this.#routes.push({ kind: 'sse', prefix, options: sseOptions(options) })
    return this
  }

  /**
   * Raw WebSockets at `prefix` (and below it): the upgrade, every limit and the fan-out of
   * `server.publish` run in Rust; `open`, `message` and `close` run here, in order per socket.
   */
  ws(prefix: string, route: WebSocketRoute): this {
    checkPrefix(prefix, 'ws')
    this.#routes.push({ kind: 'ws', prefix, options: wsRoute(route) })
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

  /**
   * @internal the JSON spec handed to the native core (`StreamingSpec` in
   * `crates/floodgate_core/src/config`): options as given, JS functions as ids.
   */
  toSpec({ register, registerWs, busSeq }: SpecContext) {
    const routes = this.#routes.map((route) => {
      if (route.kind === 'handler') return { ...route, handler: register(route.handler) }
      if (route.kind === 'uploads') {
        const { onUpload, ...spec } = route
        return onUpload ? { ...spec, onUpload: register(uploadHandler(onUpload)) } : spec
      }
      if (route.kind === 'ws') {
        return { kind: 'ws', prefix: route.prefix, options: wsNativeOptions(route.options), handlers: wsHandlers(route.options, register, registerWs) }
      }
      if (route.kind === 'sse') {
        return { kind: 'sse', prefix: route.prefix, options: sseNativeOptions(route.options), handlers: sseHandlers(route.options, register, busSeq) }
      }
      return route
    })
    const identify = this.#identify
    if (!identify) return { options: this.options, routes }
    // The answer crosses back as the body of a plain response: the user id, or empty for none.
    const asHandler: Handler = async (req) => {
      const user = await identify(req)
      return user === undefined || user === null ? '' : String(user)
    }
    return { options: this.options, routes, identify: register(asHandler) }
  }
}

/** `onUpload` as a handler: the listing arrives as the request's JSON body. */
function uploadHandler(onUpload: NonNullable<UploadsOptions['onUpload']>): Handler {
  return async (req) => {
    const listing = (await req.json()) as { files: UploadedFile[]; fields: Record<string, string | string[]> }
    const answer = await onUpload(listing.files, listing.fields, req)
    return answer === undefined ? Response.json(listing, { status: 201 }) : answer
  }
}

/** An SSE route's JS functions as handlers whose answers cross back as JSON bodies. */
function sseHandlers(options: SseOptions, register: (handler: Handler) => number, busSeq: () => number) {
  const { authenticate, topics, snapshot, onClose } = options
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
  const handlers: { setup: number; snapshot?: number; close?: number } = { setup: register(setup) }
  if (snapshot) {
    handlers.snapshot = register(async (req, { params }) => {
      // Taken before the snapshot is built: published events up to here are in it.
      const seq = busSeq()
      const value = await snapshot(req, params.user || undefined)
      return Response.json({ seq, data: typeof value === 'string' ? value : JSON.stringify(value) })
    })
  }
  if (onClose) {
    handlers.close = register((_req, { params }) => {
      onClose(params.user || undefined, params.reason as 'client' | 'overflow' | 'shutdown')
      return ''
    })
  }
  return handlers
}

/** A WebSocket route's JS side: its id in JS, `authenticate` as a handler, and whether JS hears its events. */
function wsHandlers(route: WebSocketRoute, register: (handler: Handler) => number, registerWs: (route: WebSocketRoute) => number) {
  const { authenticate, open, message, close, batch, selectProtocol } = route
  const handlers: { route: number; authenticate?: number; selectProtocol?: number; jsEvents: boolean } = {
    route: registerWs(route),
    // With no handler to hear them, the route's sockets cost JS nothing (no open/close events).
    jsEvents: Boolean(open || message || close || (route.telemetry && batch)),
  }
  if (authenticate) {
    // The answer crosses back as the body of a plain response: the user id, or 401 / 403.
    handlers.authenticate = register(async (req) => {
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
  if (selectProtocol) {
    // The answer crosses back as the body of a plain response: the chosen name, or '' for none.
    handlers.selectProtocol = register(async (req) => {
      const offered = (req.headers.get('sec-websocket-protocol') ?? '')
        .split(',')
        .map((name) => name.trim())
        .filter(Boolean)
      const chosen = await selectProtocol(offered, req)
      return chosen === undefined || chosen === null ? '' : String(chosen)
    })
  }
  return handlers
}
