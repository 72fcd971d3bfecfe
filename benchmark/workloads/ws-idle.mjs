// 10,000 idle WebSocket connections (quick: 1,000): the server's RSS growth per connection, once
// every one is open and has settled. KiB per connection is lower-is-better.
import { wsLoad, SOURCES } from '../lib/ws-load.mjs'
import { rss } from '../lib/proc.mjs'

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

export default {
  name: 'ws-idle-10k',
  fixtures: {},
  peers: ['floodgate', 'ws'],
  async run({ port, pids, quick, warmup }) {
    if (warmup) return {}
    const sockets = quick ? 1000 : 10_000
    await sleep(500) // let the fresh server settle before its baseline
    const before = rss(pids())
    const load = await wsLoad('idle', { url: `ws://127.0.0.1:${port}/ws/idle`, connections: sockets, sources: SOURCES, 'timeout-ms': 120_000 })
    const connected = await load.connected
    if (connected < sockets) throw new Error(`${connected}/${sockets} connected: ${(await load.result).error}`)
    await sleep(1000)
    const after = rss(pids())
    load.child.stdin.end('done\n')
    const result = await load.result
    return {
      'KiB/conn': (after - before) / connected / 1024,
      'server RSS MiB': after / 2 ** 20,
      'connect s': result.connectSeconds,
      ...(result.closed && { errors: `${result.closed} sockets closed by the server` }),
    }
  },
  primary: 'KiB/conn',
  lowerIsBetter: true,
}
