/**
 * What a JS handler is and what it may answer with: the handler types, and the two results
 * floodgate adds to fetch's `Response` — `StreamingResponse` and `FileResponse`.
 */

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
