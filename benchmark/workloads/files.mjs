// A 64 MiB file fetched over 16 concurrent connections (wrk): throughput in GB/s, and what each
// byte cost the server: CPU seconds (all its processes and threads, from /proc) per GB sent.
// Over TLS (`files-tls-64MiB-x16`): TLS 1.3 with the same self-signed P-256 certificate for every
// peer (the client and servers settle on TLS_AES_256_GCM_SHA384).
import { wrk } from '../lib/wrk.mjs'
import { cpuSeconds } from '../lib/proc.mjs'

/** The workload, in cleartext or (`tls`) over TLS against the peers that speak it. */
export function filesWorkload({ tls = false } = {}) {
  return {
    name: tls ? 'files-tls-64MiB-x16' : 'files-64MiB-x16',
    tls,
    fixtures: { '64m.bin': 64 * 1024 * 1024 },
    peers: tls ? ['floodgate', 'node-http', 'nginx'] : ['floodgate', 'node-http', 'fastify', 'nginx'],
    async run({ port, pids, quick }) {
      const cpuBefore = cpuSeconds(pids())
      const result = await wrk(`${tls ? 'https' : 'http'}://127.0.0.1:${port}/stream/files/64m.bin`, {
        connections: 16,
        seconds: quick ? 2 : 10,
      })
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
}

export default filesWorkload()
