// WebSocket fan-out: 10,000 sockets (quick: 1,000) subscribed to one topic; the server publishes
// events at a fixed rate through the sse workload's /api/publish run, offering 1,000,000 messages/s
// in all (10,000 × 100/s; quick 1,000 × 1,000/s) for 5 s (quick: 2 s). Delivered messages/s across
// all sockets, delivered share, publish-to-receive latency, server CPU seconds and RSS.
//
// ws-fanout-deflate-10k: the same with permessage-deflate and 1 KiB JSON-like events (ws: its
// `perMessageDeflate: true` defaults, a compression per socket per event). The client inflates
// on one socket in 100 (its latencies) and counts the others' compressed messages unread: one
// core cannot inflate a million 1 KiB messages a second, and the server's work is the same.
import { fanoutRun } from '../lib/ws-load.mjs'
import { rss } from '../lib/proc.mjs'

function fanoutWorkload({ name, path, size = 0, flags = {} }) {
  return {
    name,
    fixtures: {},
    peers: ['floodgate', 'ws'],
    async run({ port, pids, quick, warmup }) {
      if (warmup) return {}
      const sockets = quick ? 1000 : 10_000
      const rate = quick ? 1000 : 100
      const seconds = quick ? 2 : 5
      const { result, expect, cpu } = await fanoutRun('fanout', { url: `ws://127.0.0.1:${port}/ws/${path}`, port, pids, connections: sockets, rate, seconds, size, flags })
      return {
        'msg/s': result.msgPerSec,
        'delivered %': (result.delivered / expect) * 100,
        'p50 ms': result.p50Ms,
        'p99 ms': result.p99Ms,
        'server CPU s': cpu,
        'server RSS MiB': rss(pids()) / 2 ** 20,
        'client CPU %': result.seconds > 0 ? (result.clientCpuS / result.seconds) * 100 : null,
        ...(result.closed && { errors: `${result.closed} sockets closed by the server` }),
      }
    },
    primary: 'msg/s',
  }
}

export default fanoutWorkload({ name: 'ws-fanout-10k', path: 'bench' })
export const wsFanoutDeflate = fanoutWorkload({ name: 'ws-fanout-deflate-10k', path: 'bench-deflate', size: 1024, flags: { deflate: 1, 'inflate-every': 100 } })
