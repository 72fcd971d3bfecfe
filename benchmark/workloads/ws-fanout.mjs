// WebSocket fan-out: 10,000 sockets (quick: 1,000) subscribed to one topic; the server publishes
// events at a fixed rate through the sse workload's /api/publish run, offering 1,000,000 messages/s
// in all (10,000 × 100/s; quick 1,000 × 1,000/s) for 5 s (quick: 2 s). Delivered messages/s across
// all sockets, delivered share, publish-to-receive latency, server CPU seconds and RSS.
import { fanoutRun } from '../lib/ws-load.mjs'
import { rss } from '../lib/proc.mjs'

export default {
  name: 'ws-fanout-10k',
  fixtures: {},
  peers: ['floodgate', 'ws'],
  async run({ port, pids, quick, warmup }) {
    if (warmup) return {}
    const sockets = quick ? 1000 : 10_000
    const rate = quick ? 1000 : 100
    const seconds = quick ? 2 : 5
    const { result, expect, cpu } = await fanoutRun('fanout', { url: `ws://127.0.0.1:${port}/ws/bench`, port, pids, connections: sockets, rate, seconds })
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
