// SSE fan-out: N subscribers on one topic, 100 events/s for 10 s (quick: 1,000 for 2 s), driven by
// the pinned Rust load client (benchmark/ws-load `sse`: raw HTTP/1.1 sockets, chunked body scanned
// for each event's publish timestamp). Delivered events, publish-to-receive latency, server CPU
// seconds and RSS, and the client's CPU share (near 100 % means it, not the server, set the pace).
import { wsLoad, SOURCES } from '../lib/ws-load.mjs'
import { rss, cpuSeconds } from '../lib/proc.mjs'

export default {
  name: 'sse-fanout-10k',
  fixtures: {},
  peers: ['floodgate', 'node-http'],
  async run({ port, pids, quick, warmup }) {
    if (warmup) return {}
    const subscribers = quick ? 1000 : 10_000
    const seconds = quick ? 2 : 10
    const rate = 100
    const expect = subscribers * rate * seconds
    const load = await wsLoad(
      'sse',
      { url: `http://127.0.0.1:${port}/stream/sse`, connections: subscribers, sources: SOURCES, expect, 'idle-ms': 2000, 'timeout-ms': (seconds + 60) * 1000 },
      { timeout: (seconds + 120) * 1000 },
    )
    const connected = await load.connected
    if (connected < subscribers) throw new Error(`${connected}/${subscribers} subscribed: ${(await load.result).error}`)
    const cpuBefore = cpuSeconds(pids())
    const response = await fetch(`http://127.0.0.1:${port}/api/publish?rate=${rate}&seconds=${seconds}`)
    if (!response.ok) throw new Error(`/api/publish answered ${response.status}`)
    const result = await load.result
    const cpu = cpuSeconds(pids()) - cpuBefore
    return {
      'delivered %': (result.delivered / expect) * 100,
      'p99 ms': result.p99,
      'p50 ms': result.p50,
      'server CPU s': cpu,
      'server RSS MiB': rss(pids()) / 2 ** 20,
      'client CPU %': result.seconds > 0 ? (result.clientCpuS / result.seconds) * 100 : null,
      ...(result.closed && { errors: `${result.closed} streams closed by the server` }),
    }
  },
  primary: 'delivered %',
}
