/**
 * `fromNodeHandler(app)`: mounts a Node-style `(req, res)` application (Express, Koa's
 * `callback()`, a plain `http` listener) as a fetch handler.
 *
 * Rather than imitating `IncomingMessage`/`ServerResponse` — whose internals frameworks reach
 * into — the request is replayed through Node's own HTTP server and client over an in-memory
 * socket pair, so the application sees the real objects and every header, status, streamed
 * body and error passes through unchanged.
 */
import http from 'node:http'
import { Duplex, Readable } from 'node:stream'
import { optionError } from './options'
import type { FetchHandler } from './results'

type NodeHandler = (req: http.IncomingMessage, res: http.ServerResponse) => void

/** Two connected in-memory sockets: what one writes, the other reads. */
function socketPair(): [Duplex, Duplex] {
  let left: Duplex
  let right: Duplex
  const make = (peer: () => Duplex) =>
    new Duplex({
      read() {},
      write(chunk, _encoding, callback) {
        peer().push(chunk)
        callback()
      },
      final(callback) {
        peer().push(null)
        callback()
      },
    })
  left = make(() => right)
  right = make(() => left)
  // http.Server inspects these on its sockets.
  for (const socket of [left, right]) {
    Object.assign(socket, { remoteAddress: '127.0.0.1', setTimeout: () => socket, setNoDelay: () => socket, setKeepAlive: () => socket })
  }
  return [left, right]
}

export function fromNodeHandler(handler: NodeHandler): FetchHandler {
  if (typeof handler !== 'function') throw optionError('fromNodeHandler: handler must be a function')
  const server = http.createServer(handler)
  return (request) =>
    new Promise<Response>((resolve, reject) => {
      const [serverSide, clientSide] = socketPair()
      server.emit('connection', serverSide)
      const url = new URL(request.url)
      const headers: Record<string, string | string[]> = {}
      request.headers.forEach((value, name) => {
        headers[name] = value
      })
      const outgoing = http.request(
        {
          method: request.method,
          path: url.pathname + url.search,
          headers,
          createConnection: () => clientSide as unknown as import('node:net').Socket,
        },
        (incoming) => {
          const responseHeaders = new Headers()
          for (let i = 0; i < incoming.rawHeaders.length; i += 2) {
            const name = incoming.rawHeaders[i].toLowerCase()
            if (name !== 'transfer-encoding' && name !== 'connection' && name !== 'keep-alive') {
              responseHeaders.append(name, incoming.rawHeaders[i + 1])
            }
          }
          const status = incoming.statusCode ?? 500
          const bodyless = request.method === 'HEAD' || status === 204 || status === 304
          const body = bodyless ? null : (Readable.toWeb(incoming) as ReadableStream<Uint8Array>)
          if (bodyless) incoming.resume()
          resolve(new Response(body, { status, headers: responseHeaders }))
        },
      )
      outgoing.on('error', reject)
      request.signal.addEventListener('abort', () => outgoing.destroy(), { once: true })
      if (request.body) {
        Readable.fromWeb(request.body as import('node:stream/web').ReadableStream).pipe(outgoing)
      } else {
        outgoing.end()
      }
    })
}
