// Small requests over HTTP/2 on TLS: h2load, 10 connections × 10 streams, the JSON answer
// (floodgate's from a JS handler, Node's http2 from its compat handler, nginx's from its config).
import { run } from '../lib/proc.mjs'

export default {
  name: 'h2-small-tls',
  tls: true,
  http2: true,
  fixtures: {},
  peers: ['floodgate', 'node-http', 'nginx'],
  async run({ port, quick }) {
    const seconds = quick ? 2 : 8
    const { stdout, code, stderr } = await run('h2load', ['-c', '10', '-m', '10', '-D', String(seconds), '--warm-up-time', '1', `https://127.0.0.1:${port}/api/json`], { timeout: (seconds + 30) * 1000 })
    if (code !== 0) throw new Error(`h2load failed: ${stderr || stdout}`)
    const rate = /finished in [\d.]+\w+, ([\d.]+) req\/s/.exec(stdout)
    const status = /status codes: (\d+) 2xx/.exec(stdout)
    const protocol = /Application protocol: (\S+)/.exec(stdout)
    if (protocol?.[1] !== 'h2') throw new Error(`not HTTP/2: ${protocol?.[1] ?? stdout.slice(0, 200)}`)
    return { 'req/s': rate ? Number(rate[1]) : 0, '2xx': status ? Number(status[1]) : 0 }
  },
  primary: 'req/s',
}
