/**
 * The options of every part of the API, their checks, and the codes of floodgate's errors.
 * Options the native core applies are validated by it (`validateOptions`: one source of
 * defaults, units and error texts); options that exist only in JS — functions, and
 * `overrideGlobalResponse` — are checked here and never reach it.
 */
import { loadNative } from './loader'
import type { Handler, HandlerResult } from './results'
import type { ServerWebSocket, WebSocketMessage } from './ws'

const native = loadNative()

/*
 * Error codes: every error floodgate throws or reports carries a stable `err.code` (messages may
 * change; codes do not).
 *
 * - `ERR_FLOODGATE_OPTION` (TypeError): a bad option or argument — a wrong or unknown option,
 *   a prefix without `/`, a handler that is not one, a bad port, topic, close code or send
 *   data. Thrown where the value is given (constructor, `files`, `sse`, `mount`, ...); the
 *   native core's option errors are rethrown as this TypeError with their message.
 * - `ERR_FLOODGATE_STATE` (Error): a call the server's state does not allow: `mount` or
 *   `listen` once it is listening.
 * - `ERR_FLOODGATE_NOT_LISTENING` (Error): `publish`, `stats`, `metrics` before `listen`.
 * - `EADDRINUSE`, `EACCES`, `EADDRNOTAVAIL` (Error, from `listen`): the address cannot be bound;
 *   the operating system's codes, as `net.Server` reports them.
 * - `ERR_FLOODGATE_CLIENT_GONE`: the native side's answer to writing to (or reading from) an
 *   exchange whose client left; the bridge ends a streamed response quietly on it.
 * - `ERR_FLOODGATE_BODY_TOO_LARGE`, `ERR_FLOODGATE_BODY_TIMEOUT`, `ERR_FLOODGATE_BODY_ABORTED`:
 *   reading a request body (`req.text()`, `req.body`, ...) past `maxUploadSize`, past
 *   `readTimeout` / `uploadTimeout`, or after the client aborted it or broke its chunked
 *   framing. Thrown by native code into the handler that reads; for the first two and broken
 *   framing the client has already been answered `413` / `408` / `400` with `Connection: close`,
 *   whatever the handler answers next.
 * - `ERR_FLOODGATE_HANDLER_RESULT` (TypeError, reported through the server's `error` event):
 *   a handler returned something floodgate cannot send.
 */
export const ERR_OPTION = 'ERR_FLOODGATE_OPTION'
export const ERR_STATE = 'ERR_FLOODGATE_STATE'
export const ERR_NOT_LISTENING = 'ERR_FLOODGATE_NOT_LISTENING'
export const ERR_CLIENT_GONE = 'ERR_FLOODGATE_CLIENT_GONE'
export const ERR_HANDLER_RESULT = 'ERR_FLOODGATE_HANDLER_RESULT'

/** `error` with `code` set: the one way floodgate makes coded errors. */
export function coded<E extends Error>(error: E, code: string): E & { code: string } {
  return Object.assign(error, { code })
}

/** A bad option or argument. */
export const optionError = (message: string): TypeError & { code: string } => coded(new TypeError(message), ERR_OPTION)

/** A native error as JS reports it: an option error becomes the TypeError JS throws for one. */
export function fromNative(error: unknown): unknown {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown }
  return code === ERR_OPTION ? optionError(String(message)) : error
}

/** A size in bytes, or a string such as `'64kb'`, `'100mb'`. */
export type Size = number | string
/** A duration in milliseconds, or a string such as `'30s'`, `'5m'`, `'250ms'`. */
export type Duration = number | string

export interface ServerOptions {
  /** Concurrent TCP connections per client address (IPv6: per /64); 0 disables. Default 100. */
  maxConnectionsPerIp?: number
  /** The whole request head must arrive within this (slowloris). Default 10s. */
  headerTimeout?: Duration
  /** Idle keep-alive connections close after this. Default 5s. */
  keepAliveTimeout?: Duration
  /** Request line plus headers; larger heads get 431. Default 16kb. */
  maxHeaderSize?: Size
  /** CIDRs or addresses whose X-Forwarded-For / Forwarded headers are believed. Default []. */
  trustProxy?: string[]
  /** Accept cleartext HTTP/2 (prior knowledge) beside HTTP/1.1. Default false. */
  http2?: boolean
  /** Concurrent streams per HTTP/2 connection. Default 100. */
  http2MaxConcurrentStreams?: number
  /** SETTINGS, PING and PRIORITY frames an HTTP/2 client may send per second; past it, GOAWAY and close (`h2_control_flood`). 0 disables. Default 100. */
  http2MaxControlFramesPerSecond?: number
  /** Streams an HTTP/2 client may open and reset before the server sees them (rapid reset, CVE-2023-44487); past it, GOAWAY (`h2_flood`). Default 20. */
  http2MaxPendingResets?: number
  /**
   * Send file bodies with `sendfile(2)` on HTTP/1.1 (Linux): the kernel copies from the page
   * cache to the socket, as nginx's `sendfile on`. Off, or over HTTP/2 and on other systems,
   * files are read and written in `chunkSize` pieces. Default true.
   */
  sendfile?: boolean
  /**
   * Serve TLS on every connection (rustls; TLS 1.2 and 1.3). `cert` and `key` are PEM text or
   * paths of PEM files. HTTP/2 is offered by ALPN unless `tls.http2` is false. The handshake
   * shares `headerTimeout` with the first request head. `server.setTls()` replaces them live.
   */
  tls?: TlsOptions
  /**
   * Behind an L4 load balancer (HAProxy, AWS NLB): every connection must come from one of
   * `trusted` (CIDRs or addresses) and start with a PROXY protocol header (v1 or v2), whose
   * address is then the client's for every per-address limit and for handlers. Others are
   * closed and counted (`proxy_protocol_untrusted`, `proxy_protocol_invalid`). Default off.
   */
  proxyProtocol?: { trusted: string[] }
  /**
   * Share limits and the topic bus with other instances through Redis: per-user and
   * per-address WebSocket and event-stream caps, `rateLimitRequests` and `publish` become
   * cluster-wide. Without it everything is per process and no Redis is needed.
   */
  cluster?: ClusterOptions
  /**
   * Rejection events (`server.on('reject')`) handed to JS per second at most; past it they are
   * only counted, and the next event's `dropped` says how many were left out. 0: no events.
   * Default 100.
   */
  rejectEventsPerSecond?: number
  /**
   * Load shedding: while the JS thread has left work waiting longer than this (its event loop
   * is stuck or far behind), new JS-handler requests get `503` + `Retry-After: 1` without
   * reaching JS (`event_loop_overload`); files, uploads, event streams and WebSockets served in
   * Rust go on. 0 (default): never.
   */
  maxEventLoopDelay?: Duration
  /**
   * Access log, off by default: one JSON line per request in pino's format (see
   * `AccessLogEntry`), written from Rust by a writer thread in batches — `'stdout'`, a file
   * path (appended to; `server.reopenLogs()` after rotation), or a function called with each
   * entry (batched like `reject` events, at most `accessLogPerSecond` a second). Event streams
   * and WebSocket sessions are logged when they end.
   */
  accessLog?: 'stdout' | string | ((entry: AccessLogEntry) => void)
  /** Entries handed to an `accessLog` function per second at most; the rest are counted (`stats().accessLogDropped`, and `dropped` on the next entry). Default 1000. */
  accessLogPerSecond?: number
  /** Lines queued for the access log's writer; past it lines are dropped and counted, never waited for. Default 16384. */
  accessLogQueue?: number
  /** Histograms (`server.metrics()`) and rejection events; `false` keeps only `stats()`'s counters. Default true. */
  metrics?: boolean
  /** Entries of the top offenders table in `stats().topOffenders` (clients refused most often, by user else address); 0: none. At most 1024. Default 32. */
  topOffenders?: number
  /**
   * New connections per second a client address (IPv6: per /64) may open, checked at accept
   * before `maxConnectionsPerIp`: past it the connection is closed before a byte is read
   * (`connection_rate`). 0 (the default) disables; a reconnect loop is then refused only by
   * the per-IP cap.
   */
  maxConnectionRatePerIp?: number
  /** Connections an address may open at once beyond that rate. Default: the rate itself. */
  connectionRateBurst?: number
  /**
   * Offender bans: an address (IPv6: per /64), or the user `identify` named, refused `after`
   * times (any reason but a ban) within `within` is refused for `for` — at accept, the
   * connection closed before any TLS or HTTP work (`banned`), or with `403` where the address
   * comes from a trusted proxy's headers or the user from `identify`. Default off.
   */
  ban?: BanOptions
  /**
   * Replace `globalThis.Response` with floodgate's light `Response` (`FastResponse`), which
   * handlers build and floodgate sends without undici's per-response `Headers` and stream.
   * It behaves as the real class (`instanceof` holds both ways). Default true.
   */
  overrideGlobalResponse?: boolean
}

export interface ClusterOptions {
  /** `redis://[user:password@]host:port[/db]`. Required. */
  redis: string
  /** Prefix of every Redis key and channel. Default 'floodgate'. */
  prefix?: string
  /** A connection's lease expires this long after its instance last renewed it (every third of it): a dead instance's connections are given back within it. Default 15s. */
  leaseTtl?: Duration
  /** A Redis call slower than this is a failure and the failure policy applies; at most leaseTtl / 3. Default 250ms. */
  timeout?: Duration
  /** While Redis fails: `local` (each instance applies its share of every limit), `open` (allow), `closed` (refuse with 503). Default 'local'. */
  onFailure?: 'local' | 'open' | 'closed'
  /** Instances sharing the limits: the `local` policy gives each 1/instances of a limit (rounded up). Default 1. */
  instances?: number
  /** Events kept per topic in Redis for `Last-Event-ID` resume on any instance; 0 keeps none (each instance resumes from its own recent events). Default 256. */
  history?: number
}

export interface ClusterStats {
  /** Redis failed and has not answered since: limits follow `onFailure`. */
  degraded: boolean
  /** Connections of this instance holding a cluster-wide lease. */
  leases: number
  /** Limit decisions made without Redis, by reason: `timeout`, `error`, `degraded` (not asked: Redis failed earlier). */
  fallbacks: Record<'timeout' | 'error' | 'degraded', number>
  /** Times Redis answered again after failing (leases and subscriptions re-registered). */
  recoveries: number
  /** Events published here that other instances may have missed while Redis failed. */
  eventsLost: number
  /** Topic patterns this instance is subscribed to in Redis (one per distinct pattern of its subscribers); 0 while its pub/sub connection is down. */
  patterns: number
}

export interface TlsCertificate {
  /** The certificate chain: PEM text, or the path of a PEM file. */
  cert: string
  /** Its private key (PKCS#8, PKCS#1 or SEC1): PEM text, or the path of a PEM file. */
  key: string
}

export interface TlsOptions extends TlsCertificate {
  /** More certificates by the host name the client asks for (SNI); `*.example.com` matches one label. The top-level one is the default. */
  sni?: Record<string, TlsCertificate>
  /** Offer HTTP/2 by ALPN (`h2`), as browsers expect. Default true. */
  http2?: boolean
}

export interface StreamingOptions {
  /** Bytes read and written per step; the largest shaping burst. Default 64kb. */
  chunkSize?: Size
  /** A client that takes no bytes for this long is disconnected. Default 30s. */
  sendTimeout?: Duration
  /** A whole response must be delivered within this; 0 disables. Default 10m. */
  downloadTimeout?: Duration
  /** Bytes per second per connection; 0 disables. Default 10mb. */
  rateLimitBandwidth?: Size
  /** Bytes per second summed over one client's connections; 0 disables. Default 0. */
  perClientBandwidth?: Size
  /** Largest request body: 413 before reading when Content-Length says more. Default 100mb. */
  maxUploadSize?: Size
  /** A whole upload must arrive within this (408). Default 5m. */
  uploadTimeout?: Duration
  /** No body bytes for this long ends an upload (408). Default 30s. */
  readTimeout?: Duration
  /** After `minUploadRateGrace`, uploads averaging less than this per second are cut (408). Default 1kb; 0 disables. */
  minUploadRate?: Size
  /** Default 10s. */
  minUploadRateGrace?: Duration
  /** A comment line keeps a quiet event stream open through proxies this often. Default 15s. */
  sseKeepAlive?: Duration
  /** Event streams one user (or address) may hold; more get 429. Default 10. */
  sseMaxConnectionsPerUser?: number
  /** Event streams the app holds at once; more get 503. Default 10000. */
  sseMaxConnections?: number
  /** Largest WebSocket message (and frame); larger ones close the socket with 1009. Default 1mb. */
  wsMaxMessageSize?: Size
  /** No message from the client this long closes the socket (1000, "Idle timeout"); 0 disables. Default 60s. */
  wsIdleTimeout?: Duration
  /** Whether the client's pings and pongs count as activity for `wsIdleTimeout` (else only messages do). Default false. */
  wsIdleCountsPings?: boolean
  /** WebSockets one user (or, when anonymous, one address) may hold; more get 429. 0: no cap. Default 10. */
  wsMaxConnectionsPerUser?: number
  /** WebSockets one client address (IPv6: /64) may hold; more get 429. 0: no cap. Default 100. */
  wsMaxConnectionsPerIp?: number
  /** WebSockets the app holds at once; more get 503. Default 10000. */
  wsMaxConnections?: number
  /** Messages per second one socket may send (burst: a second's worth); over it: 1008 or a pause. 0: no cap. Default 100. */
  wsMaxMessagesPerSecond?: number
  /** Message bytes per second one socket may send; 0: no cap. Default 0. */
  wsMaxBytesPerSecond?: Size
  /** The server pings each socket this often; 0 disables. Default 30s. */
  wsPingInterval?: Duration
  /** A ping unanswered this long drops the connection (dead peer). Default 10s. */
  wsPongTimeout?: Duration
  /** Bytes per second read from one connection's body (TCP backpressure); 0 disables. Default 0. */
  rateLimitUploadBandwidth?: Size
  /** Bytes per second read summed over one client's connections; 0 disables. Default 0. */
  perClientUploadBandwidth?: Size
  /** Requests per `rateLimitWindow` per client (user id, else address); 0 disables. Default 100. */
  rateLimitRequests?: number
  /** Default 1m. */
  rateLimitWindow?: Duration
  /** A JS handler that has not answered within this gets 503. Default 30s. */
  handlerTimeout?: Duration
  /** JS requests in flight for this app; beyond it 503 + Retry-After without calling JS. Default 1024. */
  maxInflight?: number
  /** Requests allowed at once before the rate applies; 0 means `rateLimitRequests`. Default 0. */
  rateLimitBurst?: number
  /**
   * Names the user behind a request (from a token, a cookie, ...): per-user limits such as
   * `rateLimitRequests` key on it instead of the client address. Return undefined for none.
   * Called once per request, before any limit; keep it cheap.
   */
  identify?: (req: Request) => string | undefined | null | Promise<string | undefined | null>
}

export interface UploadsOptions {
  /** Folder uploads are written to (atomically: temp file, then rename). */
  dir: string
  /** Replace an existing file (default true) or answer 409. */
  overwrite?: boolean
  /** Sync each upload to disk before it appears under its name (default true). */
  fsync?: boolean
  /** Limits and naming of `multipart/form-data` POSTed to the mount itself. */
  multipart?: MultipartOptions
  /** Resumable uploads with the tus 1.0 protocol (core, creation, expiration, checksum) at the mount. Default: off. */
  resumable?: ResumableOptions
  /**
   * Decides the response to a multipart upload, once its files are in place (without it: 201
   * with `{ files, fields }`). `req` has the request's method, URL and headers; its body is the
   * listing as JSON. Returning `undefined` sends the default 201.
   */
  onUpload?: (files: UploadedFile[], fields: Record<string, string | string[]>, req: Request) => HandlerResult | undefined | Promise<HandlerResult | undefined>
}

/** `uploads(prefix, { multipart })`: each limit has its own status and rejection reason. */
export interface MultipartOptions {
  /** File parts per request (413, `multipart_too_many_files`). Default 100. */
  maxFiles?: number
  /** Non-file parts per request (413, `multipart_too_many_fields`). Default 100. */
  maxFields?: number
  /** Bytes of one field's value (413, `multipart_field_too_large`). Default 64kb. */
  maxFieldSize?: Size
  /** Parts of any kind per request (413, `multipart_too_many_parts`). Default 1000. */
  maxParts?: number
  /** Bytes of one part's header block (431, `multipart_header_too_large`). Default 8kb. */
  maxPartHeaderSize?: Size
  /** Bytes of one file (413 as soon as passed, `file_too_large`). Default 0: only `maxUploadSize` (the whole body) applies. */
  maxFileSize?: Size
  /** Media types a file part may declare (`image/png`, `image/*`); others get 415 (`unsupported_media_type`). Default: any. */
  allowedTypes?: string[]
  /** `request` (default): the request's files appear together once it completed, or none do. `part`: each once its part ended. */
  atomic?: 'request' | 'part'
  /** `sanitized` (default): the client's file name made safe (no path, no leading dot, no control characters, at most 200 bytes). `random`: 32 hex characters and the extension. */
  naming?: 'sanitized' | 'random'
}

/** `uploads(prefix, { resumable })`: tus uploads; `Upload-Length` is capped by the app's `maxUploadSize`. */
export interface ResumableOptions {
  /** An unfinished upload is removed this long after its creation or last PATCH. Default 24h. */
  expiration?: Duration
  /** Unfinished uploads per user (else address): 429, `resumable_uploads_limit`. Default 10; 0: no cap. */
  maxUploadsPerUser?: number
  /** Sum of one user's unfinished `Upload-Length`s: 429, `resumable_bytes_limit`. Default 10gb; 0: no cap. */
  maxBytesPerUser?: Size
}

/** One stored file of a multipart upload. */
export interface UploadedFile {
  /** The form field it came in. */
  field: string
  /** Its name under `dir`. */
  name: string
  /** The name the client gave: data only, never used as a path. */
  originalName: string
  size: number
  sha256: string
  /** The media type the client declared (`application/octet-stream` when none). */
  type: string
}

export interface FilesOptions {
  /** Folder to serve. Nothing outside it is ever served; dotfiles are never served. */
  root: string
  /** `inline` (default) or `attachment` (download with the file's name). */
  disposition?: 'inline' | 'attachment'
  /** `Cache-Control` sent with every file. */
  cacheControl?: string
}

export type SseUser = string | undefined

export interface SseOptions {
  /**
   * Who opens the stream (from `?token=`, a cookie, ...). Return the user id; return nothing, or
   * throw an error whose `status` is 401 or 403, to refuse the stream. Runs once per connection,
   * before the 200. Without it, streams are anonymous and capped per client address.
   */
  authenticate?: (req: Request) => string | undefined | null | Promise<string | undefined | null>
  /** The topics the stream subscribes to, NATS-style: `attacker.42.>`, `a.*.c`. */
  topics: string[] | ((req: Request, user: SseUser) => string[] | Promise<string[]>)
  /**
   * Sent first, as an event named `snapshot` (an object is sent as JSON). Events published
   * before it is called are covered by it; later ones follow it, none lost, none twice.
   */
  snapshot?: (req: Request, user: SseUser) => unknown
  /** Called exactly once per stream when it ends: `client`, `overflow` or `shutdown`. */
  onClose?: (user: SseUser, reason: 'client' | 'overflow' | 'shutdown') => void
  /** Events queued per connection for a slow reader. Default 256. */
  queueEvents?: number
  /** Bytes queued per connection. Default 1mb. */
  queueBytes?: Size
  /** On a full queue: drop the oldest event (default), drop the new one, or end the stream. */
  overflow?: 'dropOldest' | 'dropNewest' | 'close'
  /** `retry:` (ms) sent when the stream opens. */
  retry?: number
}

/** permessage-deflate settings of a WebSocket route. */
export interface WebSocketCompression {
  /**
   * Compress each message on its own with the worker's shared compressor (no memory per
   * socket; a published event is compressed once per window size), or keep a compressor per
   * socket (`false`: better ratio on similar messages, ~256 KiB per socket). Default true.
   */
  serverNoContextTakeover?: boolean
  /** Ask the client to compress each message on its own (shared inflater), or keep an inflater per socket (~40 KiB). Default true. */
  clientNoContextTakeover?: boolean
  /** The server's deflate window, 9 to 15 bits (smaller: less memory, worse ratio). Default 15. */
  serverMaxWindowBits?: number
  /** The window asked of clients that offer to limit theirs, 9 to 15 bits. Default 15. */
  clientMaxWindowBits?: number
  /** Messages shorter than this (bytes) are sent uncompressed. Default 128. */
  threshold?: number | string
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
  /**
   * Subprotocols the route speaks, in its order of preference: the first of them the client
   * offers is answered in `Sec-WebSocket-Protocol` and is `ws.protocol`.
   */
  protocols?: string[]
  /**
   * Chooses the subprotocol instead of `protocols`: gets those the client offers (in its order)
   * and the upgrade request; returns one of them, or nothing for none.
   */
  selectProtocol?: (offered: string[], req: Request) => string | undefined | null | Promise<string | undefined | null>
  /**
   * A client left without a subprotocol gets 400 before the upgrade; `false` lets it in with
   * `ws.protocol` ''. Default: true when `protocols` or `selectProtocol` is given.
   */
  requireProtocol?: boolean
  /**
   * permessage-deflate (RFC 7692) with clients that offer it (every browser does). Off by
   * default. `true` takes the defaults below.
   */
  compression?: boolean | WebSocketCompression
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
  /**
   * Messages checked in Rust before JS hears them: a message that is not one JSON value within
   * these bounds (and valid under `schema`) never reaches `message` or `batch`; it is dropped
   * and counted (`ws_invalid_message`), and the socket closed with 1007 at the first
   * (`onInvalid: 'close'`) or once it sent more than `maxInvalid`.
   */
  messages?: MessageRulesOptions
}

export interface MessageRulesOptions {
  /** The one format: JSON (text messages, or binary ones holding UTF-8 JSON). */
  format?: 'json'
  /** Nesting of arrays and objects, 1–128. Default 32. */
  maxDepth?: number
  /** Members of any one object. Default 1000. */
  maxKeys?: number
  /** Characters of any one string, keys included. Default 0: no cap beyond `wsMaxMessageSize`. */
  maxStringLength?: number
  /** A JSON Schema (draft 2020-12 unless `$schema` names another), compiled once; no remote `$ref`. */
  schema?: object | boolean
  /** Drop invalid messages (default) or close the socket at the first. */
  onInvalid?: 'drop' | 'close'
  /** Invalid messages a socket may send before it is closed with 1007. Default 10; 0: never. */
  maxInvalid?: number
}

/** Options of a JS handler mount (`server.mount('/api', handler, options)`). */
export type HandlerMountOptions = Pick<
  StreamingOptions,
  'maxUploadSize' | 'readTimeout' | 'handlerTimeout' | 'maxInflight' | 'rateLimitRequests' | 'rateLimitWindow' | 'rateLimitBurst' | 'rateLimitBandwidth' | 'sendTimeout'
>

export interface ListenOptions {
  /** Default 0: any free port. */
  port?: number
  /** Default '127.0.0.1'. */
  host?: string
  /**
   * Bind with `SO_REUSEPORT` (Linux only): several processes (Node's `cluster`, PM2) each
   * listen on the same port and the kernel spreads new connections over them. Every process
   * must set it. With `cluster`, they share limits and the bus too. Default false.
   */
  reusePort?: boolean
}

export interface AddressInfo {
  port: number
  address: string
  url: string
}

export interface BanOptions {
  /** Refusals that ban. Default 50. */
  after?: number
  /** ...counted within this window from the first. Default `'10s'`. */
  within?: Duration
  /** How long a ban lasts. Default `'5m'`. */
  for?: Duration
  /** Addresses or CIDRs never banned (the trusted proxies and load balancers never are). */
  exempt?: string[]
  /** Bans, and offenders being counted, kept at most (least recently banned forgotten first). Default 10,000. */
  maxEntries?: number
}

/** One ban in force, from `server.bans()`. */
export interface BanEntry {
  /** The address (`203.0.113.7`), IPv6 `/64` or `user:<id>`. */
  client: string
  remainingMs: number
}

export interface Stats {
  /** Open WebSocket sessions, and messages received from and sent to them. */
  wsConnections: number
  wsMessagesIn: number
  wsMessagesOut: number
  connectionsLive: number
  connectionsTotal: number
  requestsTotal: number
  bytesSent: number
  /** The part of `bytesSent` the kernel sent from files itself (`sendfile`, HTTP/1.1 on Linux). */
  bytesSentZeroCopy: number
  bytesReceived: number
  /** Temporary files of uploads cut by a crash, removed by uploads mounts when the server started listening (counted shortly after `listen`, once each folder was scanned). */
  staleUploadsRemoved: number
  /** Refusals and cut-offs by reason: `connection_limit`, `header_timeout`, `send_timeout`, `bad_request`, ... */
  rejections: Record<string, number>
  /** With the `cluster` option: Redis's state and the decisions made without it. */
  cluster?: ClusterStats
  /** With the `ban` option: bans in force and offenders being counted. */
  bans?: { inForce: number; offenders: number }
  /** The clients refused most often, most refused first (bounded: `topOffenders` entries). */
  topOffenders: Offender[]
  /** Rejection events left out by `rejectEventsPerSecond` (counted only). */
  rejectEventsDropped: number
  /** Access log lines written (or handed to the `accessLog` function). */
  accessLogLines: number
  /** Access log lines dropped: the writer's queue was full, past `accessLogPerSecond`, or a failed write. */
  accessLogDropped: number
}

/**
 * One access log line (`accessLog`), pino's fields first. `level` is 30, 40 for a 4xx or a
 * refusal, 50 for a 5xx; `time` is ms since the Unix epoch at the end of the exchange.
 */
export interface AccessLogEntry {
  level: number
  time: number
  pid: number
  hostname: string
  msg: 'request completed' | 'request refused' | 'request aborted' | 'event stream ended' | 'websocket closed'
  req: { method: string; url: string; protocol: 'http/1.0' | 'http/1.1' | 'h2'; tls: boolean; remoteAddress: string; remotePort: number }
  /** 499 when the client left before a response was decided. */
  res: { statusCode: number }
  /** ms from the request head to the end of the response (of the stream or session). */
  responseTime: number
  /** Request body bytes read (a WebSocket session: bytes read from the socket). */
  bytesIn: number
  /** Response body bytes sent (event streams off hyper and WebSocket sessions: bytes written to the socket). */
  bytesOut: number
  user?: string
  /** The reason a protection refused it (`stats().rejections`' names). */
  reason?: string
  /** A WebSocket session's close code. */
  closeCode?: number
  /** The function form only: entries left out by `accessLogPerSecond` before this one. */
  dropped?: number
}

/** One client of `stats().topOffenders`: a user, else an address. */
export interface Offender {
  address?: string
  user?: string
  /** Refusals counted (a newcomer replacing the least refused entry inherits its count). */
  count: number
  lastReason: string
  /** ms since the Unix epoch. */
  lastTime: number
}

/**
 * A refusal, as `server.on('reject', (event) => ...)` receives it. `reason` is one of the
 * reasons `stats().rejections` counts.
 */
export interface RejectEvent {
  reason: string
  /** The client's address, when the refusal knew it. */
  address?: string
  /** The user (`identify`, `authenticate`, an event stream's setup), when known. */
  user?: string
  /** The request path, when there was a request (cut at 256 bytes). */
  route?: string
  /** The HTTP status the client was answered with. */
  status?: number
  /** The WebSocket close code the session was closed with. */
  closeCode?: number
  /** ms since the Unix epoch. */
  time: number
  /** Events left out by `rejectEventsPerSecond` since the previous one that reached JS. */
  dropped: number
}

/** The kinds of options the native core checks (`validateOptions` in the binding). */
type OptionsKind = 'server' | 'streaming' | 'files' | 'uploads' | 'sse' | 'ws'

function objectOptions<T>(options: T | undefined, what: string): T {
  const value = options ?? ({} as T)
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw optionError(`${what}: options must be an object`)
  return value
}

/** A copy of `options` once the native core has accepted them as options of `kind`. */
export function validated<T extends object>(kind: OptionsKind, options: T | undefined, what: string): T {
  const value = objectOptions(options, what)
  try {
    native.validateOptions(kind, value)
  } catch (err) {
    throw optionError(`${what}: ${(err as Error).message}`)
  }
  return { ...value }
}

/** `new Server(options)`: the options kept, the part the native core gets, and the JS-only one. */
export function serverOptions(options: ServerOptions | undefined): {
  options: ServerOptions
  native: Omit<ServerOptions, 'overrideGlobalResponse'>
  overrideGlobalResponse: boolean
} {
  const value = objectOptions(options, 'Server')
  const { overrideGlobalResponse = true, ...rest } = value
  if (typeof overrideGlobalResponse !== 'boolean') throw optionError('Server: overrideGlobalResponse must be a boolean')
  // A function is JS-only: the native core hears only that lines go to the callback.
  const accessLog = typeof rest.accessLog === 'function' ? { callback: true } : rest.accessLog
  const native = validated('server', { ...rest, ...(accessLog === undefined ? {} : { accessLog }) }, 'Server')
  return { options: { ...value }, native: native as ServerOptions, overrideGlobalResponse }
}

/** `new StreamingApp(options)`: the options the native core gets, and `identify`. */
export function streamingOptions(options: StreamingOptions | undefined): {
  native: Omit<StreamingOptions, 'identify'>
  identify: StreamingOptions['identify']
} {
  const { identify, ...rest } = objectOptions(options, 'StreamingApp')
  if (identify !== undefined && typeof identify !== 'function') throw optionError('StreamingApp: identify must be a function')
  return { native: validated('streaming', rest, 'StreamingApp'), identify }
}

export function checkPrefix(prefix: unknown, what: string): string {
  if (typeof prefix !== 'string' || !prefix.startsWith('/')) {
    throw optionError(`${what}: prefix must be a string starting with '/'`)
  }
  return prefix
}

export function checkHandler(handler: unknown, what: string): Handler {
  const ok =
    typeof handler === 'function' ||
    (typeof handler === 'object' && handler !== null && typeof (handler as { fetch?: unknown }).fetch === 'function')
  if (!ok) throw optionError(`${what}: handler must be a function or an object with a fetch method`)
  return handler as Handler
}

/** `streaming.uploads(prefix, options)`: `onUpload` checked here, the rest by the native core. */
export function uploadsOptions(options: UploadsOptions): { native: Omit<UploadsOptions, 'onUpload'>; onUpload: UploadsOptions['onUpload'] } {
  const { onUpload, ...rest } = objectOptions(options, 'uploads')
  if (onUpload !== undefined && typeof onUpload !== 'function') throw optionError('uploads: onUpload must be a function')
  return { native: validated('uploads', rest, 'uploads'), onUpload }
}

/** An SSE route's options without its JS functions: what the native core checks and applies. */
export function sseNativeOptions(options: SseOptions): Omit<SseOptions, 'authenticate' | 'topics' | 'snapshot' | 'onClose'> {
  const { authenticate: _a, topics: _t, snapshot: _s, onClose: _c, ...rest } = options
  return rest
}

/** `streaming.sse(prefix, options)`: the functions checked here, the rest by the native core. */
export function sseOptions(options: SseOptions): SseOptions {
  const value = objectOptions(options, 'sse')
  const { authenticate, topics, snapshot, onClose } = value
  if (typeof topics !== 'function' && !Array.isArray(topics)) throw optionError('sse: topics must be an array or a function')
  for (const [name, fn] of Object.entries({ authenticate, snapshot, onClose })) {
    if (fn !== undefined && typeof fn !== 'function') throw optionError(`sse: ${name} must be a function`)
  }
  validated('sse', sseNativeOptions(value), 'sse')
  return { ...value }
}

/** A WebSocket route's options without its JS functions: what the native core checks and applies. */
export function wsNativeOptions(
  route: WebSocketRoute,
): Omit<WebSocketRoute, 'authenticate' | 'open' | 'message' | 'close' | 'telemetry' | 'batch' | 'selectProtocol'> {
  const { authenticate: _a, open: _o, message: _m, close: _c, telemetry: _t, batch: _b, selectProtocol: _s, ...rest } = route
  return rest
}

/** `streaming.ws(prefix, route)`: the functions checked here, the rest by the native core. */
export function wsRoute(route: WebSocketRoute): WebSocketRoute {
  if (typeof route !== 'object' || route === null) throw optionError('ws: options must be an object')
  for (const name of ['authenticate', 'open', 'message', 'close', 'batch', 'selectProtocol'] as const) {
    if (route[name] !== undefined && typeof route[name] !== 'function') throw optionError(`ws: ${name} must be a function`)
  }
  if (route.telemetry && typeof route.batch !== 'function') throw optionError('ws: telemetry needs a batch function')
  if (route.protocols !== undefined && (!Array.isArray(route.protocols) || route.protocols.some((p) => typeof p !== 'string'))) {
    throw optionError('ws: protocols must be an array of strings')
  }
  if (route.protocols !== undefined && route.selectProtocol) throw optionError('ws: give protocols or selectProtocol, not both')
  const { compression } = route
  if (compression !== undefined && typeof compression !== 'boolean') {
    if (typeof compression !== 'object' || compression === null || Array.isArray(compression)) {
      throw optionError('ws: compression must be true, false or an object')
    }
    const known = ['serverNoContextTakeover', 'clientNoContextTakeover', 'serverMaxWindowBits', 'clientMaxWindowBits', 'threshold']
    for (const [name, value] of Object.entries(compression)) {
      if (!known.includes(name)) throw optionError(`ws: compression.${name} is not an option (${known.join(', ')})`)
      if (name.endsWith('ContextTakeover') && typeof value !== 'boolean') throw optionError(`ws: compression.${name} must be a boolean`)
      if (name.endsWith('WindowBits') && (!Number.isInteger(value) || value < 9 || value > 15)) {
        throw optionError(`ws: compression.${name} must be an integer from 9 to 15`)
      }
    }
  }
  validated('ws', wsNativeOptions(route), 'ws')
  return { ...route }
}
