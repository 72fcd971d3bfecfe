// The 64 MiB × 16 file workload over TLS 1.3 (same self-signed P-256 certificate for every
// peer; the client and servers settle on TLS_AES_256_GCM_SHA384): GB/s and server CPU per GB.
import { wrk } from '../lib/wrk.mjs'
import { cpuSeconds } from '../lib/proc.mjs'

export default {
  name: 'files-tls-64MiB-x16',
  tls: true,
  fixtures: { '64m.bin': 64 * 1024 * 1024 },
  peers: ['floodgate', 'node-http', 'nginx'],
  async run({ port, pids, quick }) {
    const cpuBefore = cpuSeconds(pids())
    const result = await wrk(`https://127.0.0.1:${port}/stream/files/64m.bin`, { connections: 16, seconds: quick ? 2 : 10 })
    const cpu = cpuSeconds(pids()) - cpuBefore
    return {
      'GB/s': result.bytesPerSec / 1e9,
      'server CPU s/GB': result.bytesRead ? cpu / (result.bytesRead / 1e9) : null,
      'req/s': result.requestsPerSec,
      ...(result.errors && { errors: result.errors }),
    }
  },
  primary: 'GB/s',
}
