/**
 * The JS half of the handler bridge: turns native request batches into `LazyRequest`s, calls
 * the handler, and hands its answer back to Rust — bytes (batched per turn), a stream pumped
 * with backpressure, or a file for Rust to stream. Nothing here throws into native code: every
 * failure becomes a 500 and an `error` report.
 */
import type { NativeServer } from './binding'
import { NativeBatch } from './native-batch'
import { ERR_CLIENT_GONE, ERR_HANDLER_RESULT, coded } from './options'
import { LazyRequest, NativeRequest, kAbort, kAborted, kNative } from './request'
import { lightParts, realResponse } from './response'
import { FileResponse, StreamingResponse, type Handler, type HandlerContext, type HandlerResult } from './results'
import { bodySource, flatHeaderList, responseState } from './undici-state'
import { BYTES_HEADERS, RequestRecord, TEXT_HEADERS, assignPairs, batchResponse, headerBytes, headerList } from './wire'

const toBuffer = (chunk: Uint8Array | string): Buffer =>
  typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)

/** Bodies up to this size join the turn's response batch; larger ones are sent on their own. */
const BATCH_BODY_MAX = 16 * 1024

const isThenable = (value: unknown): value is PromiseLike<unknown> =>
  value !== null && typeof value === 'object' && typeof (value as { then?: unknown }).then === 'function'

export class HandlerBridge {
  readonly handlers: Handler[] = []
  readonly #inflight = new Map<number, LazyRequest>()
  native!: NativeServer
  /** `https:` when the server speaks TLS: the scheme of every request URL. */
  scheme = 'http:'
  // Complete responses of this turn, handed to Rust in one `respondBatch` call
  // (`batchResponse` in wire.ts writes them).
  readonly #batch = new NativeBatch(
    (entries, payload) => this.native.respondBatch(entries, payload),
    (error) => this.reportError(error),
  )

  constructor(private readonly reportError: (error: unknown) => void) {}

  register(handler: Handler): number {
    const known = this.handlers.indexOf(handler)
    if (known >= 0) return known
    this.handlers.push(handler)
    return this.handlers.length - 1
  }

  readonly onRequests = (numbers: Float64Array, bytes: Buffer): void => {
    for (let n = 0, at = 0; n < numbers.length; n += RequestRecord.Size) {
      const native = new NativeRequest(numbers, n, bytes, at)
      at = native.end
      this.#handle(native)
    }
    // What synchronous handlers answered goes out with this turn.
    this.flush()
  }

  readonly onAborts = (ids: number[]): void => {
    for (const id of ids) this.#inflight.get(id)?.[kAbort]()
  }

  /**
   * Calls the handler and sends its answer. A handler that returns a value (not a promise) is
   * answered in the same turn, without a microtask per step; a promise is followed with `then`.
   * Either way no failure escapes: it becomes a 500 and an `error` report.
   */
  #handle(native: NativeRequest): void {
    const request = new LazyRequest(native, this.native, this.scheme)
    let result: HandlerResult | PromiseLike<HandlerResult>
    try {
      const context: HandlerContext = { params: {}, client: native.client }
      assignPairs(native.params, context.params)
      const handler = this.handlers[native.handler]
      result =
        typeof handler === 'function'
          ? handler(request as unknown as Request, context)
          : handler.fetch(request as unknown as Request, context)
    } catch (error) {
      this.#fail(request, error)
      return
    }
    if (isThenable(result)) {
      // Aborts arrive in a later turn, so registering now (not before the call) is in time.
      this.#inflight.set(native.id, request)
      Promise.resolve(result).then(
        (value) => this.#complete(request, value),
        (error) => {
          this.#inflight.delete(native.id)
          this.#fail(request, error)
        },
      )
      return
    }
    this.#complete(request, result)
  }

  #complete(request: LazyRequest, result: HandlerResult): void {
    const id = request[kNative].id
    let pending: Promise<void> | undefined
    try {
      pending = this.#send(id, result)
    } catch (error) {
      this.#inflight.delete(id)
      this.#fail(request, error)
      return
    }
    if (pending === undefined) {
      this.#inflight.delete(id)
      return
    }
    this.#inflight.set(id, request)
    pending.then(
      () => this.#inflight.delete(id),
      (error) => {
        this.#inflight.delete(id)
        this.#fail(request, error)
      },
    )
  }

  #fail(request: LazyRequest, error: unknown): void {
    if (request[kAborted]) return
    this.#respond(request[kNative].id, 500, TEXT_HEADERS, 'Internal Server Error\n')
    this.reportError(error)
  }

  /** Answers `id` with a complete body: batched with the turn's others when small. */
  #respond(id: number, status: number, headers: string, body: string | Uint8Array | null): void {
    const bodyBytes = body === null ? 0 : typeof body === 'string' ? body.length * 3 : body.byteLength
    if (bodyBytes > BATCH_BODY_MAX) {
      this.native.respond(id, status, headerBytes(headers), typeof body === 'string' ? body : toBuffer(body as Uint8Array))
      return
    }
    batchResponse(this.#batch, id, status, headers, body)
  }

  /** Hands the gathered responses to Rust in one call (Rust copies the payload once). */
  flush(): void {
    this.#batch.flush()
  }

  /** Sends `result`; `undefined` when done at once, else a promise of the rest (a stream). */
  #send(id: number, result: HandlerResult): Promise<void> | undefined {
    const server = this.native
    if (result instanceof Response) {
      return this.#sendResponse(id, result)
    } else if (typeof result === 'string') {
      this.#respond(id, 200, TEXT_HEADERS, result)
    } else if (result instanceof Uint8Array) {
      this.#respond(id, 200, BYTES_HEADERS, result)
    } else if (result instanceof FileResponse) {
      const { status = 200, filename, mediaType, attachment = false, headers } = result.init
      server.respondFile(id, status, headerBytes(headerList(new Headers(headers))), { path: result.path, filename, mediaType, attachment })
    } else if (result instanceof StreamingResponse) {
      const { status = 200, mediaType, headers: init } = result.init
      const headers = new Headers(init)
      if (mediaType) headers.set('content-type', mediaType)
      if (server.respondStream(id, status, headerBytes(headerList(headers)))) return this.#pump(id, result.body)
    } else {
      throw coded(
        new TypeError('a handler must return a Response, StreamingResponse, FileResponse, string or Uint8Array'),
        ERR_HANDLER_RESULT,
      )
    }
    return undefined
  }

  /** A Response built from a string or bytes is sent at once; one with a stream is read. */
  #sendResponse(id: number, response: Response): Promise<void> | undefined {
    const parts = lightParts(response)
    if (parts) {
      this.#respond(id, parts.status, parts.headers, parts.body)
      return undefined
    }
    response = realResponse(response)
    const state = responseState(response)
    const headers = (state && flatHeaderList(state.headersList)) ?? headerList(response.headers)
    const source = state ? bodySource(state, response) : undefined
    if (source !== undefined) {
      this.#respond(id, response.status, headers, source)
      return undefined
    }
    if (!response.body) {
      this.#respond(id, response.status, headers, null)
      return undefined
    }
    return this.#readResponse(id, response, headers)
  }

  async #readResponse(id: number, response: Response, headers: string): Promise<void> {
    const server = this.native
    // Most bodies are one chunk (Response.json, strings): send those whole in one call.
    const reader = response.body!.getReader()
    const first = await reader.read()
    if (first.done) {
      this.#respond(id, response.status, headers, null)
      return
    }
    const second = await reader.read()
    if (second.done) {
      this.#respond(id, response.status, headers, first.value)
      return
    }
    if (!server.respondStream(id, response.status, headerBytes(headers))) {
      await reader.cancel()
      return
    }
    async function* rest() {
      try {
        yield first.value as Uint8Array
        yield second.value as Uint8Array
        for (;;) {
          const next = await reader.read()
          if (next.done) return
          yield next.value
        }
      } finally {
        reader.releaseLock()
      }
    }
    await this.#pump(id, rest())
  }

  /** Writes chunks as the client takes them; a gone client ends the loop, closing the iterator. */
  async #pump(id: number, body: AsyncIterable<Uint8Array | string> | Iterable<Uint8Array | string>) {
    const server = this.native
    try {
      for await (const chunk of body) {
        const buffer = toBuffer(chunk)
        if (buffer.length === 0) continue
        // `drain` resolves false when the client left.
        if (!server.tryWrite(id, buffer) && !(await server.drain(id))) return
      }
      server.end(id)
    } catch (error) {
      if ((error as { code?: string }).code === ERR_CLIENT_GONE) return // the client left
      throw error
    }
  }
}
