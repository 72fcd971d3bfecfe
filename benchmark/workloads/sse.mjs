// SSE fan-out: N subscribers on one topic, 100 events/s for 10 s (quick: 1,000 for 2 s), driven by
// the pinned Rust load client (benchmark/ws-load `sse`: raw HTTP/1.1 sockets, chunked body scanned
// for each event's publish timestamp). Delivered events, publish-to-receive latency, server CPU
// seconds and RSS, and the client's CPU share (near 100 % means it, not the server, set the pace).
import { fanoutRun } from '../lib/ws-load.mjs'
import { rss } from '../lib/proc.mjs'

export default {
  name: 'sse-fanout-10k',
  fixtures: {},
  peers: ['floodgate', 'node-http'],
  async run({ port, pids, quick, warmup }) {
    if (warmup) return {}
    const subscribers = quick ? 1000 : 10_000
    const seconds = quick ? 2 : 10
    const { result, expect, cpu } = await fanoutRun('sse', {
      url: `http://127.0.0.1:${port}/stream/sse`,
      port,
      pids,
      connections: subscribers,
      rate: 100,
      seconds,
    })
    return {
      'delivered %': (result.delivered / expect) * 100,
      'p99 ms': result.p99Ms,
      'p50 ms': result.p50Ms,
      'server CPU s': cpu,
      'server RSS MiB': rss(pids()) / 2 ** 20,
      'client CPU %': result.seconds > 0 ? (result.clientCpuS / result.seconds) * 100 : null,
      ...(result.closed && { errors: `${result.closed} streams closed by the server` }),
    }
  },
  primary: 'delivered %',
}
