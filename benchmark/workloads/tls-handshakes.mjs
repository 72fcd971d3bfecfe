// New TLS 1.3 handshakes per second, keep-alive off: `openssl s_time -new` (a full handshake
// per connection, no resumption), two clients at once, against each peer with the same P-256
// certificate.
import { run } from '../lib/proc.mjs'
import { cpuSeconds } from '../lib/proc.mjs'

export default {
  name: 'tls-handshakes',
  tls: true,
  fixtures: {},
  peers: ['floodgate', 'node-http', 'nginx'],
  async run({ port, pids, quick }) {
    const seconds = quick ? 2 : 8
    const cpuBefore = cpuSeconds(pids())
    const started = Date.now()
    const clients = await Promise.all(
      [0, 1].map(() => run('openssl', ['s_time', '-connect', `127.0.0.1:${port}`, '-new', '-time', String(seconds)], { timeout: (seconds + 30) * 1000 })),
    )
    const elapsed = (Date.now() - started) / 1000
    const cpu = cpuSeconds(pids()) - cpuBefore
    const handshakes = clients.reduce((sum, { stdout }) => sum + Number(/(\d+) connections in [\d.]+s/.exec(stdout)?.[1] ?? 0), 0)
    if (!handshakes) throw new Error(`s_time made no connection: ${clients[0].stderr.slice(-200)}`)
    return {
      'handshakes/s': handshakes / elapsed,
      'server CPU ms/handshake': (cpu * 1000) / handshakes,
    }
  },
  primary: 'handshakes/s',
}
