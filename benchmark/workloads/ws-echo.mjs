// WebSocket echo through a JS handler: 50 connections, each keeping 16 small text messages
// (32 bytes) in flight, for 10 s (quick: 2 s). Messages/s and round-trip latency, measured by the
// Rust load client (benchmark/ws-load), pinned to its own core.
//
// ws-echo-deflate: the same with permessage-deflate and 1 KiB JSON-like messages (ws: its
// `perMessageDeflate: true` defaults). The client sends each message compressed and inflates
// every echo (see benchmark/ws-load), so the server inflates and deflates every message.
import { wsLoad } from '../lib/ws-load.mjs'
import { cpuSeconds } from '../lib/proc.mjs'

const CONNECTIONS = 50

function echoWorkload({ name, path, flags }) {
  return {
    name,
    fixtures: {},
    peers: ['floodgate', 'ws'],
    async run({ port, pids, quick, warmup }) {
      const seconds = warmup ? 1 : quick ? 2 : 10
      const cpuBefore = cpuSeconds(pids())
      const load = await wsLoad('echo', {
        url: `ws://127.0.0.1:${port}/ws/${path}`,
        connections: CONNECTIONS,
        inflight: 16,
        seconds,
        ...flags,
      })
      const result = await load.result
      const cpu = cpuSeconds(pids()) - cpuBefore
      if (result.connected < CONNECTIONS) throw new Error(`${result.connected}/${CONNECTIONS} connected: ${result.error}`)
      const errors = [result.broken && `${result.broken} connections broke`, result.wrong && `${result.wrong} echoes inflated to the wrong size`].filter(Boolean)
      return {
        'msg/s': result.msgPerSec,
        'p50 ms': result.p50Ms,
        'p99 ms': result.p99Ms,
        'server CPU %': (cpu / result.seconds) * 100,
        'client CPU %': (result.clientCpuS / result.seconds) * 100,
        ...(errors.length && { errors: errors.join(', ') }),
      }
    },
    primary: 'msg/s',
  }
}

export default echoWorkload({ name: 'ws-echo', path: 'echo', flags: { size: 32 } })
export const wsEchoDeflate = echoWorkload({ name: 'ws-echo-deflate', path: 'echo-deflate', flags: { deflate: 1, json: 1 } })
