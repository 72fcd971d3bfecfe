// WebSocket echo through a JS handler: 50 connections, each keeping 16 small text messages
// (32 bytes) in flight, for 10 s (quick: 2 s). Messages/s and round-trip latency, measured by the
// Rust load client (benchmark/ws-load), pinned to its own core.
import { wsLoad } from '../lib/ws-load.mjs'
import { cpuSeconds } from '../lib/proc.mjs'

const CONNECTIONS = 50

export default {
  name: 'ws-echo',
  fixtures: {},
  peers: ['floodgate', 'ws'],
  async run({ port, pids, quick, warmup }) {
    const seconds = warmup ? 1 : quick ? 2 : 10
    const cpuBefore = cpuSeconds(pids())
    const load = await wsLoad('echo', {
      url: `ws://127.0.0.1:${port}/ws/echo`,
      connections: CONNECTIONS,
      inflight: 16,
      size: 32,
      seconds,
    })
    const result = await load.result
    const cpu = cpuSeconds(pids()) - cpuBefore
    if (result.connected < CONNECTIONS) throw new Error(`${result.connected}/${CONNECTIONS} connected: ${result.error}`)
    return {
      'msg/s': result.msgPerSec,
      'p50 ms': result.p50Ms,
      'p99 ms': result.p99Ms,
      'server CPU %': (cpu / result.seconds) * 100,
      'client CPU %': (result.clientCpuS / result.seconds) * 100,
      ...(result.broken && { errors: `${result.broken} connections broke` }),
    }
  },
  primary: 'msg/s',
}
