/**
 * The wire formats between JS and the native side, all in one place: header lists
 * (`name\0value\0...`) and the records of the batches that cross in one call — requests and
 * WebSocket events coming in, responses and WebSocket sends going out. Each layout names its
 * Rust counterpart; no other module builds or parses these by hand.
 *
 * Record fields are `const enum`s: offsets the compiler inlines as numbers, so decoding costs
 * what indexing by literal offsets did.
 */
import type { NativeBatch } from './native-batch'
import { coded } from './options'

// ---------------------------------------------------------------------------------------------
// Header lists: `name\0value\0name\0value`, one string for a whole list. Header values are
// ByteStrings (one character per byte, as `Headers` and Node's `http` treat them), so a list
// crosses as Latin-1 bytes both ways; route params use the same joining, as UTF-8.

/** `flat` with one more header. */
export const withHeader = (flat: string, name: string, value: string): string =>
  flat ? `${flat}\0${name}\0${value}` : `${name}\0${value}`

/**
 * A `Headers` as a flat list: one conversion to cross, not one per header. Each Set-Cookie
 * stays a header of its own (`Headers#forEach` would join them).
 */
export function headerList(headers: Headers): string {
  let flat = ''
  headers.forEach((value, name) => {
    if (name !== 'set-cookie') flat = withHeader(flat, name, value)
  })
  for (const cookie of headers.getSetCookie()) flat = withHeader(flat, 'set-cookie', cookie)
  return flat
}

/** The first value of `name` in a flat list, without splitting it. */
export function findHeader(flat: string, name: string): string | undefined {
  let at = 0
  while (at < flat.length) {
    const nameEnd = flat.indexOf('\0', at)
    if (nameEnd < 0) return undefined
    const valueEnd = flat.indexOf('\0', nameEnd + 1)
    const end = valueEnd < 0 ? flat.length : valueEnd
    if (nameEnd - at === name.length && flat.startsWith(name, at)) return flat.slice(nameEnd + 1, end)
    at = end + 1
  }
  return undefined
}

/** Appends every pair of a flat list to `headers`. */
export function appendHeaders(flat: string, headers: Headers): void {
  if (!flat) return
  const parts = flat.split('\0')
  for (let i = 0; i < parts.length; i += 2) headers.append(parts[i], parts[i + 1])
}

/** Sets every pair of a flat list (a route's `:params`) on `record`. */
export function assignPairs(flat: string, record: Record<string, string>): void {
  if (!flat) return
  const parts = flat.split('\0')
  for (let i = 0; i < parts.length; i += 2) record[parts[i]] = parts[i + 1]
}

/** A flat list as `[name, value]` pairs (a `HeadersInit`). */
export function headerPairs(flat: string): [string, string][] {
  const pairs: [string, string][] = []
  if (!flat) return pairs
  const parts = flat.split('\0')
  for (let i = 0; i < parts.length; i += 2) pairs.push([parts[i], parts[i + 1]])
  return pairs
}

/**
 * A flat list as the bytes to send, one per character: header values are ByteStrings
 * (`Headers` refuses characters above U+00FF), and Node's `http` writes them this way. The
 * response batch writes its heads the same way (`batchResponse`).
 */
export const headerBytes = (flat: string): Buffer => Buffer.from(flat, 'latin1')

/** The head of a plain-text answer (a string result, the 500 of a failed handler). */
export const TEXT_HEADERS = 'content-type\0text/plain; charset=utf-8'
/** The head of a bytes answer (a Uint8Array result). */
export const BYTES_HEADERS = 'content-type\0application/octet-stream'

// ---------------------------------------------------------------------------------------------
// Requests in (`onRequests(numbers, bytes)`, written by `NapiHost::request` in
// `crates/floodgate_napi/src/host.rs`): per request these numbers, and the bytes of method,
// url, client, headers and params (flat lists) end to end in `bytes`, request after request.

export const enum RequestRecord {
  Id = 0,
  Handler = 1,
  /** 1 when the request has a body to read. */
  HasBody = 2,
  MethodLength = 3,
  UrlLength = 4,
  ClientLength = 5,
  HeadersLength = 6,
  ParamsLength = 7,
  /** Numbers per request. */
  Size = 8,
}

// ---------------------------------------------------------------------------------------------
// WebSocket events in (`onWsEvents(numbers, strings, payload)`, written by `NapiHost::ws_event`
// in `host.rs`): per event four numbers; an open adds three strings, a close or a refusal one, a message its
// bytes to `payload`.

export const enum WsEventKind {
  Open = 0,
  Message = 1,
  Close = 2,
  /** The client's input was refused: close with its code (and its one string, the reason) after the replies sent so far. */
  Refused = 3,
}

/** The fields every event has. */
export const enum WsEventRecord {
  Kind = 0,
  Id = 1,
  /** Numbers per event. */
  Size = 4,
}

export const enum WsOpenRecord {
  /** The route's id in `WebSocketBridge#routes`. */
  Route = 2,
  /** 1 when the socket has a user (the first string). */
  HasUser = 3,
}

export const enum WsMessageRecord {
  /** 1 for binary, 0 for text. */
  Binary = 2,
  /** Its length in `payload`. */
  Length = 3,
}

export const enum WsCloseRecord {
  /** The close code (the reason is the event's one string). */
  Code = 2,
}

/** The strings of an open event, in order (a close has one: the reason). */
export const enum WsOpenStrings {
  /** Empty when the socket has none. */
  User = 0,
  Client = 1,
  Url = 2,
  /** The subprotocol answered in the 101 (empty: none). */
  Protocol = 3,
  Count = 4,
}

// ---------------------------------------------------------------------------------------------
// Out: entries of a `NativeBatch` (four numbers each, bytes end to end in its payload).

/**
 * A complete response into the turn's response batch (`Bridge::respond_batch` in
 * `crates/floodgate_core/src/bridge.rs`): entry `id, status, headersLength, bodyLength`, then
 * the head (Latin-1) and the body in the payload.
 */
export function batchResponse(batch: NativeBatch, id: number, status: number, headers: string, body: string | Uint8Array | null): void {
  const headersLength = batch.text(headers, 'latin1')
  // -1: no body at all, as opposed to an empty one.
  const bodyLength = body === null ? -1 : typeof body === 'string' ? batch.text(body) : batch.bytes(body)
  batch.entry(id, status, headersLength, bodyLength)
}

/** Kinds of the WebSocket send batch (`WsHub::send_batch` in `crates/floodgate_core/src/ws_hub.rs`). */
const enum WsSend {
  Text = 0,
  Binary = 1,
  Close = 2,
  /** The client's input was refused: close with its code (and its one string, the reason) after the replies sent so far. */
  Refused = 3,
}

// Entries of the WebSocket send batch: `id, kind, length, code`, the message (or close reason)
// in the payload.

/** `ws.send(text)`: a text message. */
export function batchWsText(batch: NativeBatch, id: number, text: string): void {
  batch.entry(id, WsSend.Text, batch.text(text), 0)
}

/** `ws.send(bytes)`: a binary message. */
export function batchWsBinary(batch: NativeBatch, id: number, bytes: Uint8Array): void {
  batch.entry(id, WsSend.Binary, batch.bytes(bytes), 0)
}

/** `ws.close(code, reason)`. */
export function batchWsClose(batch: NativeBatch, id: number, code: number, reason: string): void {
  batch.entry(id, WsSend.Close, batch.text(reason), code)
}

/** Messages of the codes `readBody` resolves with when a request body ends in error. */
const BODY_ERRORS: Record<string, string> = {
  ERR_FLOODGATE_BODY_TOO_LARGE: 'request body too large',
  ERR_FLOODGATE_BODY_TIMEOUT: 'request body read timed out',
  ERR_FLOODGATE_BODY_ABORTED: 'client aborted the request body',
  ERR_FLOODGATE_CLIENT_GONE: 'the client is gone',
}

/**
 * One step of a request body as `readBody` resolves it: a chunk, `null` at the end, or the
 * code of the error that ended it (napi-rs rejects promises with codes of its own, so the
 * native side resolves with the code and it is thrown here).
 */
export function bodyChunk(step: Buffer | string | null): Buffer | null {
  if (typeof step === 'string') throw coded(new Error(BODY_ERRORS[step] ?? step), step)
  return step
}
