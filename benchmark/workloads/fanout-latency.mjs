// Fan-out latency: 10,000 subscribers (quick: 1,000) on one topic, offered a fixed number of
// deliveries per second in all, over WebSocket and over event streams, each rate a run of its own
// (5 s; quick: 2 s). Per transport and rate: publish-to-receive p50 / p99 / max, delivered share,
// server CPU µs per delivery and RSS, and the load client's own CPU µs per delivery (its share of
// the latency: a burst of N deliveries costs it about N × that on its core). The subscribers are
// spread over one client process per spare core (`CLIENT_PROCESSES`: 1 on 2 cores, up to 4).
// Rates: 20k and 100k deliveries/s by default; `--full` runs 10k, 20k, 50k, 100k and 200k.
// Peers: `ws` (WebSocket only), Node `http` (event streams only), Centrifugo v6 (one instance,
// memory engine: its JSON WebSocket protocol, and its unidirectional SSE transport).
import { wsLoadSpread, buildWsLoad, SOURCES, CLIENT_PROCESSES } from '../lib/ws-load.mjs'
import { rss, cpuSeconds } from '../lib/proc.mjs'
import { streamUrl } from './sse-idle.mjs'

const full = process.argv.includes('--full')
export const RATES = full ? [10_000, 20_000, 50_000, 100_000, 200_000] : [20_000, 100_000]
const TRANSPORTS = { floodgate: ['ws', 'sse'], ws: ['ws'], 'node-http': ['sse'], 'centrifugo-1': ['ws', 'sse'] }
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function target(peer, port, transport) {
  if (transport === 'sse') return { mode: 'sse', url: await streamUrl(peer, port), protocol: {} }
  if (peer !== 'centrifugo-1') return { mode: 'fanout', url: `ws://127.0.0.1:${port}/ws/bench`, protocol: {} }
  const { port: direct } = await (await fetch(`http://127.0.0.1:${port}/api/ws-port`)).json()
  return { mode: 'fanout', url: `ws://127.0.0.1:${direct}/connection/websocket`, protocol: { centrifugo: 1 } }
}

/** One transport at one offered rate: connect, wait until every subscriber is counted, publish, measure. */
async function point({ peer, port, pids, transport, subscribers, offered, seconds }) {
  const eventsPerSecond = offered / subscribers
  const expect = subscribers * eventsPerSecond * seconds
  const { mode, url, protocol } = await target(peer, port, transport)
  const load = await wsLoadSpread(
    mode,
    { url, connections: subscribers, sources: SOURCES, expect, 'idle-ms': 2000, 'timeout-ms': (seconds + 60) * 1000, ...protocol },
    { timeout: (seconds + 120) * 1000 },
  )
  const connected = await load.connected
  if (connected < subscribers) throw new Error(`${transport}: ${connected}/${subscribers} subscribed: ${(await load.result).error}`)
  if (peer === 'centrifugo-1') {
    const count = async () => (await (await fetch(`http://127.0.0.1:${port}/api/count`)).json()).subscribers
    for (let i = 0; i < 500 && (await count()) < subscribers; i++) await sleep(20)
  } else await sleep(200)
  const cpuBefore = cpuSeconds(pids())
  const response = await fetch(`http://127.0.0.1:${port}/api/publish?rate=${eventsPerSecond}&seconds=${seconds}`)
  if (!response.ok) throw new Error(`/api/publish answered ${response.status}`)
  const result = await load.result
  const cpu = cpuSeconds(pids()) - cpuBefore
  const delivered = Math.max(result.delivered, 1)
  return {
    p50: result.p50Ms,
    p99: result.p99Ms,
    max: result.maxMs,
    delivered: (result.delivered / expect) * 100,
    cpuUs: (cpu / delivered) * 1e6,
    rssMiB: rss(pids()) / 2 ** 20,
    clientUs: (result.clientCpuS / delivered) * 1e6,
    // A server whose publisher falls behind (`ws` and Node send from the JS thread, whose timer
    // then fires late) delivers everything over a longer span: the rate it actually sustained.
    achieved: result.msgPerSec,
    closed: result.closed,
  }
}

export default {
  name: 'fanout-latency',
  fixtures: {},
  peers: ['floodgate', 'ws', 'node-http', 'centrifugo-1'],
  async run({ port, pids, quick, warmup, peer }) {
    if (warmup) return {}
    await buildWsLoad()
    const subscribers = quick ? 1000 : 10_000
    const seconds = quick ? 2 : 5
    const out = {}
    for (const transport of TRANSPORTS[peer]) {
      for (const offered of quick ? [RATES[0]] : RATES) {
        const at = `${transport} ${offered / 1000}k/s`
        const r = await point({ peer, port, pids, transport, subscribers, offered, seconds })
        out[`${at} p50 ms`] = r.p50
        out[`${at} p99 ms`] = r.p99
        out[`${at} max ms`] = r.max
        out[`${at} delivered %`] = r.delivered
        out[`${at} achieved/s`] = r.achieved
        out[`${at} server CPU µs/delivery`] = r.cpuUs
        out[`${at} server RSS MiB`] = r.rssMiB
        out[`${at} client CPU µs/delivery`] = r.clientUs
        // What one burst (an event to every subscriber) costs the client on its cores: the
        // client's own share of the latency, at most, for the last subscriber it reads.
        out[`${at} client ms/burst`] = (r.clientUs * subscribers) / CLIENT_PROCESSES / 1000
        if (r.closed) out[`${at} errors`] = `${r.closed} subscribers closed by the server`
        console.error(`fanout-latency: ${peer} ${at} ${JSON.stringify(r)}`)
      }
    }
    out['client processes'] = CLIENT_PROCESSES
    // The primary figure: the p99 at the highest rate run, over WebSocket where the peer has it.
    out['p99 ms'] = out[`${TRANSPORTS[peer][0]} ${(quick ? RATES[0] : RATES.at(-1)) / 1000}k/s p99 ms`]
    return out
  },
  primary: 'p99 ms',
  lowerIsBetter: true,
}
