/**
 * The request a handler receives: `NativeRequest` is one request of a native batch, its text
 * fields decoded when first read; `LazyRequest` is the fetch `Request` over it, built only as
 * far as the handler looks.
 */
import type { NativeServer } from './binding'
import { RequestRecord, appendHeaders, bodyChunk, findHeader } from './wire'

/**
 * One request as the native side sends it (`RequestRecord` in wire.ts): numbers, and the bytes
 * of its text fields, decoded when first read (most handlers read few of them).
 */
export class NativeRequest {
  readonly id: number
  readonly handler: number
  readonly hasBody: boolean
  /** The client address (after `trustProxy`). */
  readonly client: string
  /** Where the next request's bytes begin. */
  readonly end: number
  readonly #bytes: Buffer
  readonly #methodAt: number
  readonly #urlAt: number
  readonly #clientAt: number
  readonly #headersAt: number
  readonly #paramsAt: number
  #method: string | undefined
  #url: string | undefined
  #headers: string | undefined

  /** The request at `numbers[n]`, its fields' bytes from `bytes[at]` on. */
  constructor(numbers: Float64Array, n: number, bytes: Buffer, at: number) {
    this.id = numbers[n + RequestRecord.Id]
    this.handler = numbers[n + RequestRecord.Handler]
    this.hasBody = numbers[n + RequestRecord.HasBody] === 1
    this.#bytes = bytes
    this.#methodAt = at
    this.#urlAt = at + numbers[n + RequestRecord.MethodLength]
    this.#clientAt = this.#urlAt + numbers[n + RequestRecord.UrlLength]
    this.#headersAt = this.#clientAt + numbers[n + RequestRecord.ClientLength]
    this.#paramsAt = this.#headersAt + numbers[n + RequestRecord.HeadersLength]
    this.end = this.#paramsAt + numbers[n + RequestRecord.ParamsLength]
    this.client = bytes.toString('latin1', this.#clientAt, this.#headersAt)
  }

  get method(): string {
    return (this.#method ??= this.#bytes.toString('latin1', this.#methodAt, this.#urlAt))
  }

  /** Path (prefix stripped) and query. */
  get url(): string {
    return (this.#url ??= this.#bytes.toString('utf8', this.#urlAt, this.#clientAt))
  }

  /**
   * A flat header list, one character per byte: header values are ByteStrings to `Headers`,
   * and Node's `http` decodes them the same way.
   */
  get headers(): string {
    return (this.#headers ??= this.#bytes.toString('latin1', this.#headersAt, this.#paramsAt))
  }

  /** The route's `:params` as a flat list. */
  get params(): string {
    return this.#paramsAt === this.end ? '' : this.#bytes.toString('utf8', this.#paramsAt, this.end)
  }
}

export const kNative = Symbol('native')
const kServer = Symbol('server')
const kReal = Symbol('request')
const kHeaders = Symbol('headers')
const kController = Symbol('controller')
export const kAborted = Symbol('aborted')
export const kAbort = Symbol('abort')

/**
 * A `Request` built only as far as the handler looks: method, url and headers are plain
 * fields; anything else (the body, clone(), ...) materialises the real `Request` on first use.
 * Building every `Request`, `Headers` and `AbortSignal` up front costs more than most handlers
 * spend on their own work (@hono/node-server does the same).
 */
export class LazyRequest {
  [kNative]: NativeRequest
  [kServer]: NativeServer
  [kReal]: Request | undefined
  [kHeaders]: Headers | undefined
  [kController]: AbortController | undefined
  [kAborted] = false
  #url: string | undefined
  readonly #scheme: string

  constructor(native: NativeRequest, server: NativeServer, scheme = 'http:') {
    this[kNative] = native
    this[kServer] = server
    this.#scheme = scheme
  }

  get method(): string {
    return this[kNative].method
  }

  get url(): string {
    if (this.#url === undefined) {
      const native = this[kNative]
      this.#url = `${this.#scheme}//${findHeader(native.headers, 'host') ?? 'localhost'}${native.url}`
    }
    return this.#url
  }

  get headers(): Headers {
    if (!this[kHeaders]) {
      const headers = new Headers()
      appendHeaders(this[kNative].headers, headers)
      this[kHeaders] = headers
    }
    return this[kHeaders]
  }

  get signal(): AbortSignal {
    if (!this[kController]) {
      this[kController] = new AbortController()
      if (this[kAborted]) this[kController].abort(new Error('client disconnected'))
    }
    return this[kController].signal
  }

  [kAbort](): void {
    this[kAborted] = true
    this[kController]?.abort(new Error('client disconnected'))
  }

  /** The real Request, for everything this class does not answer itself. */
  materialise(): Request {
    if (!this[kReal]) {
      const native = this[kNative]
      const init: RequestInit & { duplex?: string } = { method: native.method, headers: this.headers, signal: this.signal }
      if (native.hasBody) {
        const id = native.id
        const server = this[kServer]
        init.body = new ReadableStream<Uint8Array>({
          async pull(controller) {
            const chunk = bodyChunk(await server.readBody(id))
            if (chunk) controller.enqueue(chunk)
            else controller.close()
          },
        })
        init.duplex = 'half'
      }
      this[kReal] = new Request(this.url, init)
    }
    return this[kReal]
  }
}

for (const name of [
  'body',
  'bodyUsed',
  'cache',
  'credentials',
  'destination',
  'duplex',
  'integrity',
  'keepalive',
  'mode',
  'redirect',
  'referrer',
  'referrerPolicy',
]) {
  Object.defineProperty(LazyRequest.prototype, name, {
    get(this: LazyRequest) {
      return (this.materialise() as unknown as Record<string, unknown>)[name]
    },
  })
}
for (const name of ['arrayBuffer', 'blob', 'bytes', 'clone', 'formData', 'json', 'text']) {
  Object.defineProperty(LazyRequest.prototype, name, {
    value(this: LazyRequest) {
      const real = this.materialise() as unknown as Record<string, () => unknown>
      return real[name]()
    },
  })
}
// `req instanceof Request` holds, as handlers and frameworks expect.
Object.setPrototypeOf(LazyRequest.prototype, Request.prototype)
