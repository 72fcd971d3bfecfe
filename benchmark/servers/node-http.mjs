// Node `http` + fs.createReadStream: the obvious way to serve a file from Node.
import http from 'node:http'
import https from 'node:https'
import http2 from 'node:http2'
import { createReadStream, createWriteStream, statSync, readFileSync } from 'node:fs'
import { pipeline } from 'node:stream/promises'
import { createRequire } from 'node:module'
import { join, basename } from 'node:path'

const root = process.env.ROOT
const require = createRequire(import.meta.url)
const { publishFor } = require('./publish.cjs')
// SSE fan-out written the obvious way: every subscriber's response, one write each per event.
const subscribers = new Set()
// TLS workloads: Node `https` with the same certificate as the other peers.
const tls = process.env.TLS_CERT && { cert: readFileSync(process.env.TLS_CERT), key: readFileSync(process.env.TLS_KEY) }
// With TLS_H2, Node's http2 (HTTP/1.1 too, by ALPN) through its compatibility API.
const createServer = tls ? (process.env.TLS_H2 === '1' ? (handler) => http2.createSecureServer({ ...tls, allowHTTP1: true }, handler) : https.createServer.bind(null, tls)) : http.createServer
const server = createServer(async (req, res) => {
  if (req.url === '/api/json') {
    const body = JSON.stringify({ hello: 'world' })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    res.end(body)
    return
  }
  if (req.url === '/stream/sse') {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
    res.flushHeaders()
    subscribers.add(res)
    req.on('close', () => subscribers.delete(res))
    return
  }
  if (req.url.startsWith('/api/publish')) {
    const params = new URL(req.url, 'http://x').searchParams
    let id = 0
    publishFor(Number(params.get('rate')), Number(params.get('seconds')), (data) => {
      const frame = `id: ${++id}\ndata: ${data}\n\n`
      for (const subscriber of subscribers) subscriber.write(frame)
    })
    res.writeHead(204).end()
    return
  }
  if (req.url === '/stream/generate') {
    // The same 100 MiB of 64 KiB chunks, written with backpressure.
    res.writeHead(200, { 'content-type': 'application/octet-stream' })
    const chunk = Buffer.alloc(64 * 1024, 7)
    for (let i = 0; i < 1600; i++) {
      if (!res.write(chunk)) await new Promise((resolve) => res.once('drain', resolve))
    }
    res.end()
    return
  }
  const name = basename(req.url)
  if (req.method === 'PUT') {
    // The obvious upload: pipe the request into a file.
    await pipeline(req, createWriteStream(join(process.env.UPLOAD_DIR ?? root, name)))
    res.writeHead(201).end()
    return
  }
  let stat
  try {
    stat = statSync(join(root, name))
  } catch {
    res.writeHead(404).end()
    return
  }
  res.writeHead(200, { 'content-length': stat.size, 'content-type': 'application/octet-stream' })
  createReadStream(join(root, name)).pipe(res)
})
server.listen(0, '127.0.0.1', () => console.log(`READY ${server.address().port}`))
process.on('SIGTERM', () => process.exit(0))
