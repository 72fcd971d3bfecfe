/**
 * Probes into undici's internal state of a `Response` (Node's fetch): its header list and the
 * string or bytes its body was built from. Reading them spares building `Headers` iterators
 * and reading web streams for every response. Each probe finds its symbol by description once,
 * checks the shape it reads, and answers `undefined` when anything differs (another fetch
 * implementation, a newer undici); callers then use the public API.
 */
import { withHeader } from './wire'

let stateSymbol: symbol | null | undefined
let headersMapSymbol: symbol | null | undefined
let streamStateSymbol: symbol | null | undefined

/** undici's internal state of a `Response` (where found: another implementation has none). */
export interface ResponseState {
  headersList?: unknown
  body?: { source?: unknown; stream?: ReadableStream } | null
}

export function responseState(response: Response): ResponseState | undefined {
  if (stateSymbol === undefined) {
    stateSymbol = Object.getOwnPropertySymbols(response).find((symbol) => symbol.description === 'state') ?? null
  }
  if (stateSymbol === null) return undefined
  const state = (response as unknown as Record<symbol, ResponseState | undefined>)[stateSymbol]
  return state && typeof state === 'object' ? state : undefined
}

/**
 * `headerList` (wire.ts) read from undici's header list (a Map of lower-case name →
 * `{ value }`, plus the `cookies` array) in insertion order: `Headers#forEach` sorts on every
 * call, which cost as much as the rest of sending. `undefined` when the list does not look as
 * expected; then the public API is used.
 */
export function flatHeaderList(list: unknown): string | undefined {
  if (!list || typeof list !== 'object') return undefined
  if (headersMapSymbol === undefined) {
    headersMapSymbol = Object.getOwnPropertySymbols(list).find((symbol) => symbol.description === 'headers map') ?? null
  }
  if (headersMapSymbol === null) return undefined
  const map = (list as Record<symbol, unknown>)[headersMapSymbol]
  if (!(map instanceof Map)) return undefined
  let flat = ''
  for (const [name, entry] of map as Map<unknown, { value?: unknown } | undefined>) {
    if (name === 'set-cookie') continue
    const value = entry?.value
    if (typeof name !== 'string' || typeof value !== 'string') return undefined
    flat = withHeader(flat, name, value)
  }
  if (map.has('set-cookie')) {
    const cookies = (list as { cookies?: unknown }).cookies
    if (!Array.isArray(cookies)) return undefined
    for (const cookie of cookies) {
      if (typeof cookie !== 'string') return undefined
      flat = withHeader(flat, 'set-cookie', cookie)
    }
  }
  return flat
}

/**
 * The body a `Response` was built from, when it was a string or bytes not yet read: `null` for
 * no body, `undefined` when only reading the stream will tell. undici keeps that source in its
 * internal state; where it is not found (another fetch implementation), the stream is read.
 */
export function bodySource(state: ResponseState, response: Response): string | Uint8Array | null | undefined {
  if (!('body' in state)) return undefined
  const body = state.body
  if (body === null || body === undefined) return null
  const source = body.source
  if (typeof source !== 'string' && !(source instanceof Uint8Array)) return undefined
  return untouched(body.stream, response) ? source : undefined
}

/**
 * Whether the body stream is neither locked nor read from (`!locked && !bodyUsed`). Read from
 * Node's own stream state where found: on Node 20 every ReadableStream gets a hidden class of
 * its own (`makeTransferable`), so each call of the public getters misses V8's inline caches
 * and costs about 0.4 µs — as much as the rest of sending a response.
 */
export function untouched(stream: ReadableStream | undefined, response: Response): boolean {
  if (!stream) return true
  if (streamStateSymbol === undefined) {
    streamStateSymbol = Object.getOwnPropertySymbols(stream).find((symbol) => symbol.description === 'kState') ?? null
  }
  type StreamState = { disturbed?: unknown; reader?: unknown }
  const internal = streamStateSymbol ? (stream as unknown as Record<symbol, StreamState | undefined>)[streamStateSymbol] : undefined
  if (internal && typeof internal === 'object' && typeof internal.disturbed === 'boolean' && 'reader' in internal) {
    return !internal.disturbed && internal.reader === undefined
  }
  return !stream.locked && !response.bodyUsed
}
