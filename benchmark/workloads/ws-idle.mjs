// 10,000 idle WebSocket connections (quick: 1,000): the server's RSS growth per connection, 1 s
// after every one is open, and 11 s after. KiB per connection is lower-is-better.
//
// With compression (ws-idle-deflate-10k, ws-idle-deflate-own-10k): each socket negotiates
// permessage-deflate, sends one compressed 1 KiB message to an echo route and inflates the echo,
// then idles: contexts created on first use exist by then. floodgate's `compression: true`
// shares a compressor and an inflater per worker thread; `-own` gives each socket its own
// (`serverNoContextTakeover: false, clientNoContextTakeover: false`); ws keeps contexts per
// socket in both. These routes have a JS `message` handler (the plain one has none), so their
// figures include the JS side of a socket.
import { wsLoad, SOURCES } from '../lib/ws-load.mjs'
import { rss } from '../lib/proc.mjs'

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function idleWorkload({ name, path, flags = {} }) {
  return {
    name,
    fixtures: {},
    peers: ['floodgate', 'ws'],
    async run({ port, pids, quick, warmup }) {
      if (warmup) return {}
      const sockets = quick ? 1000 : 10_000
      await sleep(500) // let the fresh server settle before its baseline
      const before = rss(pids())
      const load = await wsLoad('idle', { url: `ws://127.0.0.1:${port}/ws/${path}`, connections: sockets, sources: SOURCES, 'timeout-ms': 120_000, ...flags })
      const connected = await load.connected
      if (connected < sockets) throw new Error(`${connected}/${sockets} connected: ${(await load.result).error}`)
      await sleep(1000)
      const after = rss(pids())
      // Ten seconds more: floodgate's allocator (jemalloc, dirty_decay_ms 10 s) has returned
      // the pages the handshakes used and freed by then; V8's heap does not shrink.
      await sleep(10_000)
      const settled = rss(pids())
      load.child.stdin.end('done\n')
      const result = await load.result
      return {
        'KiB/conn': (after - before) / connected / 1024,
        'KiB/conn at 11 s': (settled - before) / connected / 1024,
        'server RSS MiB': after / 2 ** 20,
        'connect s': result.connectSeconds,
        ...(result.closed && { errors: `${result.closed} sockets closed by the server` }),
      }
    },
    primary: 'KiB/conn',
    lowerIsBetter: true,
  }
}

export default idleWorkload({ name: 'ws-idle-10k', path: 'idle' })
export const wsIdleDeflate = idleWorkload({ name: 'ws-idle-deflate-10k', path: 'echo-deflate', flags: { deflate: 1, json: 1 } })
export const wsIdleDeflateOwn = idleWorkload({ name: 'ws-idle-deflate-own-10k', path: 'echo-deflate-own', flags: { deflate: 1, json: 1 } })
