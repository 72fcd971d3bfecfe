/**
 * A `Response` that costs what its arguments cost. On Node 20, undici's `Response` builds a
 * `Headers`, a `ReadableStream` and their internal state for every response: about 8–9 µs of
 * the JS thread, more than the rest of a request's way through floodgate together. This class
 * keeps a string, bytes or no body, the status and a flat header list, and is sent from those;
 * the real `Response` is built only when something asks for what only it has (`headers`,
 * `body`, `text()`, `clone()`, ...), and from then on it answers everything. @hono/node-server
 * does the same, for the same reason.
 *
 * Anything the fast path does not cover exactly — a header list as an array, a stream or
 * `Blob` body, an invalid status or header — builds the real `Response` at once, so errors
 * are thrown where undici throws them. `instanceof Response` holds both ways: a light
 * response is an instance of the real class, and when this class replaces
 * `globalThis.Response`, real responses (from `fetch`, say) are instances of it.
 */
import { headerPairs, withHeader } from './wire'

const RealResponse: typeof Response = globalThis.Response
type BodyInit = ConstructorParameters<typeof Response>[0]

const kParts = Symbol('parts')
const kReal = Symbol('real')

/** What a light response is sent from: status, headers (a flat list, wire.ts), body. */
export interface ResponseParts {
  status: number
  headers: string
  body: string | Uint8Array | null
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
// A header value fetch accepts unchanged: Latin-1, no NUL/CR/LF, no leading or trailing
// whitespace (which `Headers` would trim). No NUL also keeps the flat list unambiguous.
const PLAIN_VALUE = /^(?:[^\0\r\n\t \u0100-\uffff](?:[^\0\r\n\u0100-\uffff]*[^\0\r\n\t \u0100-\uffff])?)?$/
const NULL_BODY_STATUS = new Set([101, 103, 204, 205, 304])
const TEXT_PLAIN = 'text/plain;charset=UTF-8'

/**
 * `init.headers` as a flat list (wire.ts), with `contentType` added when absent; `undefined`
 * when the fast path cannot keep it exactly as `Headers` would (left to the real class).
 */
function flatInitHeaders(headers: unknown, contentType: string | undefined): string | undefined {
  let flat = ''
  let hasContentType = false
  if (headers instanceof Headers) {
    // Already checked and normalised by `Headers`; iteration sorts and joins as the real
    // class's copy does, and yields each Set-Cookie on its own.
    for (const [name, value] of headers) {
      if (name === 'content-type') hasContentType = true
      flat = withHeader(flat, name, value)
    }
  } else if (headers !== undefined) {
    if (headers === null || typeof headers !== 'object' || Object.getPrototypeOf(headers) !== Object.prototype) return undefined
    let names: string[] | undefined
    for (const name in headers) {
      const value = (headers as Record<string, unknown>)[name]
      if (typeof value !== 'string' || !TOKEN.test(name) || !PLAIN_VALUE.test(value)) return undefined
      const lower = name.toLowerCase()
      if (lower !== name) {
        // `{ 'X-A': 1, 'x-a': 2 }` is one header to `Headers`; leave that rare case to it.
        names ??= Object.keys(headers).map((key) => key.toLowerCase())
        if (names.indexOf(lower) !== names.lastIndexOf(lower)) return undefined
      }
      if (lower === 'content-type') hasContentType = true
      flat = withHeader(flat, lower, value)
    }
  }
  if (contentType && !hasContentType) flat = withHeader(flat, 'content-type', contentType)
  return flat
}

/** The parts of `new Response(body, init)`, or `undefined` when only the real class will do. */
function partsOf(body: unknown, init: unknown, contentType: string | undefined): ResponseParts | undefined {
  let status = 200
  let headers: unknown
  if (init !== undefined) {
    if (init === null || typeof init !== 'object' || Object.getPrototypeOf(init) !== Object.prototype) return undefined
    const { status: given, statusText, headers: initHeaders } = init as ResponseInit
    if (given !== undefined) {
      if (typeof given !== 'number' || !Number.isInteger(given) || given < 200 || given > 599) return undefined
      status = given
    }
    // Only the status is sent (with its standard reason phrase); a custom text needs the real
    // class's checks.
    if (statusText !== undefined && statusText !== '') return undefined
    headers = initHeaders
  }
  let kept: string | Uint8Array | null
  if (body === undefined || body === null) kept = null
  else if (typeof body === 'string') kept = body
  // A copy, as the real class takes one: later writes to the caller's bytes do not show.
  else if (body instanceof Uint8Array) kept = Uint8Array.prototype.slice.call(body)
  else return undefined
  if (kept !== null && NULL_BODY_STATUS.has(status)) return undefined
  const flat = flatInitHeaders(headers, kept === null ? undefined : contentType)
  return flat === undefined ? undefined : { status, headers: flat, body: kept }
}

/** See the module comment. */
export class LightResponse {
  [kParts]: ResponseParts | undefined;
  [kReal]: Response | undefined

  constructor(body?: BodyInit | null, init?: ResponseInit) {
    const parts = partsOf(body, init, typeof body === 'string' ? TEXT_PLAIN : undefined)
    this[kParts] = parts
    // Built now when the fast path does not apply, so that bad arguments throw here.
    this[kReal] = parts ? undefined : new RealResponse(body, init)
  }

  /** `Response.json(data, init)`, light when `init` allows. */
  static json(data: unknown, init?: ResponseInit): Response {
    const text = JSON.stringify(data)
    if (text === undefined) throw new TypeError('Response.json: value is not JSON serializable')
    const parts = partsOf(text, init, 'application/json')
    if (!parts) return RealResponse.json(data, init)
    const response = Object.create(LightResponse.prototype) as LightResponse
    response[kParts] = parts
    response[kReal] = undefined
    return response as unknown as Response
  }

  get status(): number {
    return this[kParts]?.status ?? this[kReal]!.status
  }

  get ok(): boolean {
    const status = this.status
    return status >= 200 && status <= 299
  }

  get statusText(): string {
    return this[kParts] ? '' : this[kReal]!.statusText
  }

  get type(): Response['type'] {
    return this[kParts] ? 'default' : this[kReal]!.type
  }

  get url(): string {
    return this[kParts] ? '' : this[kReal]!.url
  }

  get redirected(): boolean {
    return this[kParts] ? false : this[kReal]!.redirected
  }

  get bodyUsed(): boolean {
    return this[kParts] ? false : this[kReal]!.bodyUsed
  }
}

/** The real response behind `response`, built on first need; the light parts are dropped. */
function realOf(response: LightResponse): Response {
  let real = response[kReal]
  if (!real) {
    const parts = response[kParts]!
    real = new RealResponse(parts.body as BodyInit | null, { status: parts.status, headers: headerPairs(parts.headers) })
    response[kReal] = real
    response[kParts] = undefined
  }
  return real
}

// Everything else the real class has is answered by the real response (`headers`, `body`,
// `text()`, `clone()`, ... whatever this Node version's undici defines).
for (const [name, descriptor] of Object.entries(Object.getOwnPropertyDescriptors(RealResponse.prototype))) {
  if (name === 'constructor' || Object.prototype.hasOwnProperty.call(LightResponse.prototype, name)) continue
  if (descriptor.get) {
    Object.defineProperty(LightResponse.prototype, name, {
      configurable: true,
      enumerable: descriptor.enumerable,
      get(this: LightResponse) {
        return (realOf(this) as unknown as Record<string, unknown>)[name]
      },
    })
  } else if (typeof descriptor.value === 'function') {
    Object.defineProperty(LightResponse.prototype, name, {
      configurable: true,
      enumerable: descriptor.enumerable,
      writable: true,
      value(this: LightResponse, ...args: unknown[]) {
        const real = realOf(this) as unknown as Record<string, (...a: unknown[]) => unknown>
        return real[name](...args)
      },
    })
  }
}
Object.setPrototypeOf(LightResponse.prototype, RealResponse.prototype)
// Static `error()` and `redirect()` come from the real class.
Object.setPrototypeOf(LightResponse, RealResponse)
// `x instanceof LightResponse` (and, once installed, `x instanceof Response`) holds for real
// responses as well as light ones.
// A subclass (`class X extends Response`) keeps the ordinary rule.
Object.defineProperty(LightResponse, Symbol.hasInstance, {
  value(this: unknown, value: unknown): boolean {
    if (this === LightResponse) return value instanceof RealResponse
    return Function.prototype[Symbol.hasInstance].call(this, value)
  },
})
Object.defineProperty(LightResponse, 'name', { value: 'Response' })

/** The parts `response` is sent from while it is light; `undefined` for a real response. */
export function lightParts(response: Response): ResponseParts | undefined {
  return (response as unknown as LightResponse)[kParts]
}

/** The real response behind a light one that has been built; else `response` itself. */
export function realResponse(response: Response): Response {
  return (response as unknown as LightResponse)[kReal] ?? response
}

/** Replaces `globalThis.Response` with `LightResponse` (once; idempotent). */
export function installLightResponse(): void {
  if (globalThis.Response === (LightResponse as unknown as typeof Response)) return
  Object.defineProperty(globalThis, 'Response', {
    value: LightResponse,
    writable: true,
    configurable: true,
    enumerable: false,
  })
}

/** `Response` as floodgate sends it fastest, for code that keeps the global one. */
export const FastResponse = LightResponse as unknown as typeof Response
