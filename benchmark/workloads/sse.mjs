// SSE fan-out: N subscribers on one topic, 100 events/s for 10 s (quick: 1,000 for 3 s).
// Delivered events, p99 publish-to-receive latency, server CPU seconds and RSS.
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { rss, cpuSeconds } from '../lib/proc.mjs'

const clientScript = fileURLToPath(new URL('../lib/sse-client.mjs', import.meta.url))

export default {
  name: 'sse-fanout-10k',
  fixtures: {},
  peers: ['floodgate', 'node-http'],
  async run({ port, pids, quick, warmup }) {
    if (warmup) return {}
    const subscribers = quick ? 1000 : 10_000
    const seconds = quick ? 3 : 10
    const rate = 100
    const client = spawn(process.execPath, [clientScript, port, subscribers, '/stream/sse', (seconds + 2) * 1000], {
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    let output = ''
    client.stdout.on('data', (chunk) => (output += chunk))
    while (!output.includes('CONNECTED')) await new Promise((r) => setTimeout(r, 50))
    const [pid] = pids()
    const cpuBefore = cpuSeconds(pid)
    await fetch(`http://127.0.0.1:${port}/api/publish?rate=${rate}&seconds=${seconds}`)
    await new Promise((resolve) => client.on('exit', resolve))
    const cpu = cpuSeconds(pid) - cpuBefore
    const result = JSON.parse(output.trim().split('\n').at(-1))
    return {
      'delivered %': (result.delivered / (subscribers * rate * seconds)) * 100,
      'p99 ms': result.p99,
      'p50 ms': result.p50,
      'server CPU s': cpu,
      'server RSS MiB': rss(pids()) / 2 ** 20,
    }
  },
  primary: 'delivered %',
}
