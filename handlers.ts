/**
 * The JS half of the handler bridge: turns native requests into fetch `Request`s, calls the
 * handler, and hands its answer back to Rust — bytes, a stream pumped with backpressure, or a
 * file for Rust to stream. Nothing here throws into native code: every failure becomes a 500
 * and an `error` report.
 */
import type { NativeRequest, NativeServer } from './binding'

/** Anything `new Headers()` accepts. */
export type HeaderInit = ConstructorParameters<typeof Headers>[0]

/** What a handler receives beside the `Request`. */
export interface HandlerContext {
  /** `:param` values of the matched route (and `*` for a trailing wildcard). */
  params: Record<string, string>
  /** The client address (after `trustProxy`). */
  client: string
}

export type HandlerResult = Response | StreamingResponse | FileResponse | string | Uint8Array
export type FetchHandler = (req: Request, ctx: HandlerContext) => HandlerResult | Promise<HandlerResult>
/** A fetch-style function, or anything with a `fetch` method (a Hono app, for instance). */
export type Handler = FetchHandler | { fetch(req: Request, env?: unknown, ctx?: unknown): Response | Promise<Response> }

export interface StreamingInit {
  status?: number
  /** Content-Type of the stream. */
  mediaType?: string
  headers?: HeaderInit
}

/**
 * A response whose body is pulled from an (async) iterable as the client takes it: the next
 * chunk is requested only when the socket can take it, and the iterator's `return()` is called
 * when the client goes away.
 */
export class StreamingResponse {
  constructor(
    readonly body: AsyncIterable<Uint8Array | string> | Iterable<Uint8Array | string>,
    readonly init: StreamingInit = {},
  ) {}
}

export interface FileInit {
  status?: number
  /** Name offered in Content-Disposition (default: the file's own). */
  filename?: string
  /** Content-Type (default: from the extension). */
  mediaType?: string
  /** `attachment` disposition (download) instead of `inline`. */
  attachment?: boolean
  headers?: HeaderInit
}

/**
 * A file chosen by the handler (after its own checks) and streamed by Rust with everything a
 * files mount does — Range, validators, shaping, timeouts — like nginx's X-Accel-Redirect.
 */
export class FileResponse {
  constructor(
    readonly path: string,
    readonly init: FileInit = {},
  ) {}
}

function flatHeaders(headers: Headers): string[] {
  const flat: string[] = []
  headers.forEach((value, name) => {
    if (name !== 'set-cookie') flat.push(name, value)
  })
  for (const cookie of headers.getSetCookie()) flat.push('set-cookie', cookie)
  return flat
}

const toBuffer = (chunk: Uint8Array | string): Buffer =>
  typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)

const ERROR_HEADERS = ['content-type', 'text/plain; charset=utf-8']

export class HandlerBridge {
  readonly handlers: Handler[] = []
  readonly #inflight = new Map<number, AbortController>()
  native!: NativeServer

  constructor(private readonly reportError: (error: unknown) => void) {}

  register(handler: Handler): number {
    const known = this.handlers.indexOf(handler)
    if (known >= 0) return known
    this.handlers.push(handler)
    return this.handlers.length - 1
  }

  readonly onRequests = (batch: NativeRequest[]): void => {
    for (const request of batch) void this.#handle(request)
  }

  readonly onAborts = (ids: number[]): void => {
    for (const id of ids) this.#inflight.get(id)?.abort(new Error('client disconnected'))
  }

  async #handle(native: NativeRequest): Promise<void> {
    const controller = new AbortController()
    this.#inflight.set(native.id, controller)
    try {
      const request = this.#request(native, controller.signal)
      const context: HandlerContext = { params: {}, client: native.client }
      for (let i = 0; i < native.params.length; i += 2) context.params[native.params[i]] = native.params[i + 1]
      const handler = this.handlers[native.handler]
      const result =
        typeof handler === 'function' ? await handler(request, context) : await handler.fetch(request, context)
      await this.#send(native.id, result)
    } catch (error) {
      if (!controller.signal.aborted) {
        this.native.respond(native.id, 500, ERROR_HEADERS, 'Internal Server Error\n')
        this.reportError(error)
      }
    } finally {
      this.#inflight.delete(native.id)
    }
  }

  #request(native: NativeRequest, signal: AbortSignal): Request {
    const headers = new Headers()
    for (let i = 0; i < native.headers.length; i += 2) headers.append(native.headers[i], native.headers[i + 1])
    const url = `http://${headers.get('host') ?? 'localhost'}${native.url}`
    if (!native.hasBody) return new Request(url, { method: native.method, headers, signal })
    const id = native.id
    const server = this.native
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        const chunk = await server.readBody(id)
        if (chunk) controller.enqueue(chunk)
        else controller.close()
      },
    })
    return new Request(url, { method: native.method, headers, body, signal, duplex: 'half' } as RequestInit)
  }

  async #send(id: number, result: HandlerResult): Promise<void> {
    const server = this.native
    if (result instanceof FileResponse) {
      const { status = 200, filename, mediaType, attachment = false, headers } = result.init
      server.respondFile(id, status, flatHeaders(new Headers(headers)), { path: result.path, filename, mediaType, attachment })
    } else if (result instanceof StreamingResponse) {
      const { status = 200, mediaType, headers: init } = result.init
      const headers = new Headers(init)
      if (mediaType) headers.set('content-type', mediaType)
      if (server.respondStream(id, status, flatHeaders(headers))) await this.#pump(id, result.body)
    } else if (result instanceof Response) {
      await this.#sendResponse(id, result)
    } else if (typeof result === 'string') {
      server.respond(id, 200, ['content-type', 'text/plain; charset=utf-8'], result)
    } else if (result instanceof Uint8Array) {
      server.respond(id, 200, ['content-type', 'application/octet-stream'], toBuffer(result))
    } else {
      throw new TypeError('a handler must return a Response, StreamingResponse, FileResponse, string or Uint8Array')
    }
  }

  async #sendResponse(id: number, response: Response): Promise<void> {
    const server = this.native
    const headers = flatHeaders(response.headers)
    if (!response.body) {
      server.respond(id, response.status, headers, null)
      return
    }
    // Most bodies are one chunk (Response.json, strings): send those whole in one call.
    const reader = response.body.getReader()
    const first = await reader.read()
    if (first.done) {
      server.respond(id, response.status, headers, null)
      return
    }
    const second = await reader.read()
    if (second.done) {
      server.respond(id, response.status, headers, toBuffer(first.value))
      return
    }
    if (!server.respondStream(id, response.status, headers)) {
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
        if (!server.tryWrite(id, buffer)) await server.write(id, buffer)
      }
      server.end(id)
    } catch (error) {
      if ((error as { code?: string }).code === 'Cancelled') return // the client left
      throw error
    }
  }
}
