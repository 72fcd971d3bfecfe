/**
 * The JS half of WebSocket sessions. Rust owns the sockets and every limit; JS sees `open`,
 * `message` and `close` calls with a `ServerWebSocket` for each session.
 *
 * Both directions are batched. Events arrive as one call per wake-up of the JS thread (numbers,
 * strings, and the messages' bytes end to end). `send` and `close` calls are gathered into a
 * `NativeBatch` and cross to Rust in one call per turn of the event loop, so the cost of
 * crossing the boundary is paid per batch, not per message. Both layouts are in wire.ts.
 */
import type { NativeServer } from './binding'
import { NativeBatch } from './native-batch'
import { optionError, type WebSocketRoute } from './options'
import { WsCloseRecord, WsEventKind, WsEventRecord, WsMessageRecord, WsOpenRecord, WsOpenStrings, batchWsBinary, batchWsClose, batchWsText } from './wire'

export type { WebSocketRoute } from './options'

/** Data a socket can send: a string goes as a text message, bytes as a binary one. */
export type WebSocketData = string | Uint8Array | ArrayBuffer

/** A message as a telemetry route's `batch` receives it. */
export interface WebSocketMessage {
  ws: ServerWebSocket
  /** A string for text messages, a Buffer for binary ones. */
  data: string | Buffer
  isBinary: boolean
}

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
    /** The subprotocol answered in `Sec-WebSocket-Protocol` ('' when none was). */
    readonly protocol: string,
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
      throw optionError(`close: code must be 1000 or 3000-4999, got ${code}`)
    }
    if (typeof reason !== 'string' || Buffer.byteLength(reason) > MAX_REASON_BYTES) {
      throw optionError(`close: reason must be a string of at most ${MAX_REASON_BYTES} bytes`)
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
  /** `send` and `close` calls of this turn (`batchWsText` ... in wire.ts). */
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
    for (let n = 0; n < numbers.length; n += WsEventRecord.Size) {
      const kind = numbers[n + WsEventRecord.Kind]
      const id = numbers[n + WsEventRecord.Id]
      if (kind === WsEventKind.Message) {
        const length = numbers[n + WsMessageRecord.Length]
        const isBinary = numbers[n + WsMessageRecord.Binary] === 1
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
      if (kind === WsEventKind.Open) {
        const route = this.routes[numbers[n + WsOpenRecord.Route]]
        const user = numbers[n + WsOpenRecord.HasUser] === 1 ? strings[s + WsOpenStrings.User] : undefined
        const ws = new ServerWebSocket(
          id,
          user,
          strings[s + WsOpenStrings.Client],
          strings[s + WsOpenStrings.Url],
          strings[s + WsOpenStrings.Protocol],
          route,
          this,
        )
        s += WsOpenStrings.Count
        this.#sockets.set(id, ws)
        if (route.open) this.#call(() => route.open!(ws))
      } else if (kind === WsEventKind.Refused) {
        // The client's input was refused: the close goes out behind what the handlers have
        // sent so far (this batch's replies included), and nothing is sent after it.
        const reason = strings[s++]
        const ws = this.#sockets.get(id)
        if (!ws) continue
        ws.markClosed()
        this.close(id, numbers[n + WsCloseRecord.Code], reason)
      } else {
        // A close: its one string is the reason.
        const reason = strings[s++]
        const ws = this.#sockets.get(id)
        if (!ws) continue
        this.#sockets.delete(id)
        ws.markClosed()
        if (ws.route.close) this.#call(() => ws.route.close!(ws, numbers[n + WsCloseRecord.Code], reason))
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
      batchWsText(this.#batch, id, data)
    } else {
      const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : data
      if (!(bytes instanceof Uint8Array)) throw optionError('send: data must be a string, a Uint8Array or an ArrayBuffer')
      batchWsBinary(this.#batch, id, bytes)
    }
  }

  close(id: number, code: number, reason: string): void {
    batchWsClose(this.#batch, id, code, reason)
  }

  subscribe(id: number, pattern: string): boolean {
    if (typeof pattern !== 'string') throw optionError('subscribe: topic must be a string')
    try {
      return this.native.wsSubscribe(id, pattern)
    } catch (error) {
      throw optionError((error as Error).message)
    }
  }

  /** Hands the gathered sends and closes to Rust in one call. */
  flush(): void {
    this.#batch.flush()
  }
}
