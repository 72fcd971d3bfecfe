// 10,000 idle event streams (quick: 1,000): the server's RSS growth per stream once every one is
// open (response head received) and has settled, as ws-idle-10k measures WebSockets. Held by the
// Rust load client (`ws-load sse` with nothing to count). KiB per stream is lower-is-better.
// Centrifugo's streams are its unidirectional SSE transport, subscribed to `bench` at connect.
import { wsLoad, buildWsLoad, SOURCES } from '../lib/ws-load.mjs'
import { rss } from '../lib/proc.mjs'

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** The event stream's URL on each peer (Centrifugo's clients connect to Centrifugo itself). */
export async function streamUrl(peer, port) {
  if (peer !== 'centrifugo-1') return `http://127.0.0.1:${port}/stream/sse`
  const { port: direct } = await (await fetch(`http://127.0.0.1:${port}/api/ws-port`)).json()
  return `http://127.0.0.1:${direct}/connection/uni_sse?cf_connect=${encodeURIComponent(JSON.stringify({ subs: { bench: {} } }))}`
}

export default {
  name: 'sse-idle-10k',
  fixtures: {},
  peers: ['floodgate', 'node-http', 'centrifugo-1'],
  async run({ port, pids, quick, warmup, peer }) {
    if (warmup) return {}
    const streams = quick ? 1000 : 10_000
    await sleep(500) // let the fresh server settle before its baseline
    await buildWsLoad() // not part of the connect time
    const before = rss(pids())
    const started = Date.now()
    const load = await wsLoad('sse', { url: await streamUrl(peer, port), connections: streams, sources: SOURCES, 'timeout-ms': 120_000 })
    const connected = await load.connected
    if (connected < streams) throw new Error(`${connected}/${streams} connected: ${(await load.result).error}`)
    const connectSeconds = (Date.now() - started) / 1000
    await sleep(1000)
    const after = rss(pids())
    load.child.stdin.end('done\n')
    const result = await load.result
    return {
      'KiB/stream': (after - before) / connected / 1024,
      'server RSS MiB': after / 2 ** 20,
      'connect s': connectSeconds,
      ...(result.closed && { errors: `${result.closed} streams closed by the server` }),
    }
  },
  primary: 'KiB/stream',
  lowerIsBetter: true,
}
