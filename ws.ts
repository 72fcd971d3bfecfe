/**
 * The JS half of WebSocket sessions. Rust owns the sockets and every limit; JS sees `open`,
 * `message` and `close` calls with a `ServerWebSocket` for each session.
 *
 * Both directions are batched. Events arrive as one call per wake-up of the JS thread (numbers,
 * strings, and the messages' bytes end to end; `crates/floodgate_napi/src/host.rs` has the
 * layout). `send` and `close` calls are gathered into a `NativeBatch` and cross to Rust in one
 * call per turn of the event loop (`ws_hub.rs` reads the layout), so the cost of crossing the
 * boundary is paid per batch, not per message.
 */
import type { NativeServer } from './binding'
import { NativeBatch } from './native-batch'

/** Data a socket can send: a string goes as a text message, bytes as a binary one. */
export type WebSocketData = string | Uint8Array | ArrayBuffer

/** A message as a telemetry route's `batch` receives it. */
export interface WebSocketMessage {
  ws: ServerWebSocket
  /** A string for text messages, a Buffer for binary ones. */
  data: string | Buffer
  isBinary: boolean
}

export interface WebSocketRoute {
  /**
   * Who opens the socket (from `?token=`, a cookie, ...). Return the user id; return nothing,
   * or throw an error whose `status` is 401 or 403, to refuse the upgrade with that status.
   * Without it, sockets are anonymous (or named by the app's `identify`) and capped per address.
   */
  authenticate?: (req: Request) => string | undefined | null | Promise<string | undefined | null>
  open?: (ws: ServerWebSocket) => unknown
  /** Text messages arrive as strings, binary ones as Buffers; in order per socket. */
  message?: (ws: ServerWebSocket, data: string | Buffer, isBinary: boolean) => unknown
  /** Called exactly once per socket: the close code (1005: none given, 1006: connection lost). */
  close?: (ws: ServerWebSocket, code: number, reason: string) => unknown
  /** Fire-and-forget input: `message` is not called; `batch` gets every delivery's messages at once. */
  telemetry?: boolean
  batch?: (messages: WebSocketMessage[]) => unknown
  /** Outbound messages queued per socket for a slow reader. Default 1024. */
  queueMessages?: number
  /** Outbound bytes queued per socket. Default 1mb. */
  queueBytes?: number | string
  /** On a full queue: drop the oldest message (default), drop the new one, or close with 1013. */
  overflow?: 'dropOldest' | 'dropNewest' | 'close'
  /** Over `wsMaxMessagesPerSecond` / `wsMaxBytesPerSecond`: close with 1008 (default), or pause reading. */
  rateLimitAction?: 'close' | 'pause'
}

/** The route options Rust checks and applies (the rest are JS functions). */
export function nativeRouteOptions(route: WebSocketRoute): Record<string, unknown> {
  const { authenticate: _a, open: _o, message: _m, close: _c, telemetry: _t, batch: _b, ...rest } = route
  return rest
}

/** Kinds of the entries of a send batch (`ws_hub.rs`). */
const SEND_TEXT = 0
const SEND_BINARY = 1
const SEND_CLOSE = 2

const MAX_REASON_BYTES = 123

/** One WebSocket session, as handlers see it. */
export class ServerWebSocket {
  #closed = false
  readonly #bridge: WebSocketBridge

  /** @internal */
  constructor(
    readonly id: number,
    /** The id `authenticate` (or the app's `identify`) gave, if any. */
    readonly user: string | undefined,
    /** The client address (after `trustProxy`). */
    readonly remoteAddress: string,
    /** Path (prefix stripped) and query of the upgrade request. */
    readonly url: string,
    /** @internal */
    readonly route: WebSocketRoute,
    bridge: WebSocketBridge,
  ) {
    this.#bridge = bridge
  }

  /** Queues a message; `false` once the socket is closed or closing. */
  send(data: WebSocketData): boolean {
    if (this.#closed) return false
    this.#bridge.send(this.id, data)
    return true
  }

  /** Closes with `code` (1000, or 3000–4999 for the application's own) and a short reason. */
  close(code = 1000, reason = ''): void {
    if (!Number.isInteger(code) || (code !== 1000 && (code < 3000 || code > 4999))) {
      throw new TypeError(`close: code must be 1000 or 3000-4999, got ${code}`)
    }
    if (typeof reason !== 'string' || Buffer.byteLength(reason) > MAX_REASON_BYTES) {
      throw new TypeError(`close: reason must be a string of at most ${MAX_REASON_BYTES} bytes`)
    }
    if (this.#closed) return
    this.#closed = true
    this.#bridge.close(this.id, code, reason)
  }

  /** Receives what `server.publish` sends on topics matching `pattern` (`a.*.c`, `a.>`). */
  subscribe(pattern: string): boolean {
    return this.#bridge.subscribe(this.id, pattern)
  }

  unsubscribe(pattern: string): boolean {
    return this.#bridge.native.wsUnsubscribe(this.id, pattern)
  }

  /** Bytes queued for this socket and not yet written to it. */
  get bufferedAmount(): number {
    return this.#closed ? 0 : this.#bridge.native.wsBufferedAmount(this.id)
  }

  /** @internal the session ended */
  markClosed(): void {
    this.#closed = true
  }
}

export class WebSocketBridge {
  readonly routes: WebSocketRoute[] = []
  readonly #sockets = new Map<number, ServerWebSocket>()
  native!: NativeServer
  /** `send` and `close` calls of this turn: entries `id, kind, length, code`. */
  readonly #batch = new NativeBatch(
    (entries, payload) => this.native.wsSend(entries, payload),
    (error) => this.reportError(error),
  )

  constructor(private readonly reportError: (error: unknown) => void) {}

  register(route: WebSocketRoute): number {
    this.routes.push(route)
    return this.routes.length - 1
  }

  /** Open sockets (for tests and stats). */
  get size(): number {
    return this.#sockets.size
  }

  readonly onWsEvents = (numbers: Float64Array, strings: string[], payload: Buffer): void => {
    let telemetry: Map<WebSocketRoute, WebSocketMessage[]> | undefined
    let s = 0
    let offset = 0
    for (let n = 0; n < numbers.length; n += 4) {
      const kind = numbers[n]
      const id = numbers[n + 1]
      if (kind === 1) {
        const length = numbers[n + 3]
        const isBinary = numbers[n + 2] === 1
        const data = isBinary ? payload.subarray(offset, offset + length) : payload.toString('utf8', offset, offset + length)
        offset += length
        const ws = this.#sockets.get(id)
        if (!ws) continue
        if (ws.route.telemetry) {
          telemetry ??= new Map()
          let list = telemetry.get(ws.route)
          if (!list) telemetry.set(ws.route, (list = []))
          list.push({ ws, data, isBinary })
        } else if (ws.route.message) {
          this.#call(() => ws.route.message!(ws, data, isBinary))
        }
        continue
      }
      // Opens and closes keep their place after the messages before them.
      this.#deliverTelemetry(telemetry)
      if (kind === 0) {
        const route = this.routes[numbers[n + 2]]
        const user = numbers[n + 3] === 1 ? strings[s] : undefined
        const ws = new ServerWebSocket(id, user, strings[s + 1], strings[s + 2], route, this)
        s += 3
        this.#sockets.set(id, ws)
        if (route.open) this.#call(() => route.open!(ws))
      } else {
        const reason = strings[s++]
        const ws = this.#sockets.get(id)
        if (!ws) continue
        this.#sockets.delete(id)
        ws.markClosed()
        if (ws.route.close) this.#call(() => ws.route.close!(ws, numbers[n + 2], reason))
      }
    }
    this.#deliverTelemetry(telemetry)
    // What the handlers sent goes out with this turn.
    this.flush()
  }

  #deliverTelemetry(pending: Map<WebSocketRoute, WebSocketMessage[]> | undefined): void {
    if (!pending) return
    for (const [route, messages] of pending) {
      if (route.batch) this.#call(() => route.batch!(messages))
    }
    pending.clear()
  }

  /** Calls a handler; a throw or a rejection is reported, never thrown into native code. */
  #call(run: () => unknown): void {
    try {
      const result = run()
      if (result && typeof (result as Promise<unknown>).then === 'function') {
        ;(result as Promise<unknown>).then(undefined, this.reportError)
      }
    } catch (error) {
      this.reportError(error)
    }
  }

  send(id: number, data: WebSocketData): void {
    if (typeof data === 'string') {
      this.#batch.entry(id, SEND_TEXT, this.#batch.text(data), 0)
    } else {
      const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : data
      if (!(bytes instanceof Uint8Array)) throw new TypeError('send: data must be a string, a Uint8Array or an ArrayBuffer')
      this.#batch.entry(id, SEND_BINARY, this.#batch.bytes(bytes), 0)
    }
  }

  close(id: number, code: number, reason: string): void {
    this.#batch.entry(id, SEND_CLOSE, this.#batch.text(reason), code)
  }

  subscribe(id: number, pattern: string): boolean {
    if (typeof pattern !== 'string') throw new TypeError('subscribe: topic must be a string')
    try {
      return this.native.wsSubscribe(id, pattern)
    } catch (error) {
      throw new TypeError((error as Error).message)
    }
  }

  /** Hands the gathered sends and closes to Rust in one call. */
  flush(): void {
    this.#batch.flush()
  }
}
