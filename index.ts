/**
 * floodgate's public entry: a `Server` owning the listening socket, `StreamingApp`s mounted
 * under path prefixes and served by Rust, and JS handlers. This file only re-exports; see
 * ARCHITECTURE.md ("Layers") for which file holds what.
 */
export { Server } from './server'
export { StreamingApp } from './streaming-app'
export type {
  Size,
  Duration,
  ServerOptions,
  TlsOptions,
  TlsCertificate,
  ClusterOptions,
  ClusterStats,
  Offender,
  RejectEvent,
  AccessLogEntry,
  BanOptions,
  BanEntry,
  StreamingOptions,
  UploadsOptions,
  MultipartOptions,
  ResumableOptions,
  UploadedFile,
  FilesOptions,
  SseUser,
  SseOptions,
  WebSocketRoute,
  MessageRulesOptions,
  WebSocketCompression,
  HandlerMountOptions,
  ListenOptions,
  AddressInfo,
  Stats,
} from './options'
export { StreamingResponse, FileResponse } from './results'
export type { Handler, FetchHandler, HandlerContext, HandlerResult, StreamingInit, FileInit } from './results'
export { fromNodeHandler } from './node-adapter'
export { FastResponse } from './response'
export type { DashboardOptions, DashboardVerdict } from './dashboard'
export { ServerWebSocket } from './ws'
export type { WebSocketMessage, WebSocketData } from './ws'
