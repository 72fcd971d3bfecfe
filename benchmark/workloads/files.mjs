// A 64 MiB file fetched over 16 concurrent connections (wrk): throughput in GB/s.
import { wrk } from '../lib/wrk.mjs'

export default {
  name: 'files-64MiB-x16',
  fixtures: { '64m.bin': 64 * 1024 * 1024 },
  peers: ['floodgate', 'node-http', 'fastify', 'nginx'],
  async run({ port, quick }) {
    const result = await wrk(`http://127.0.0.1:${port}/stream/files/64m.bin`, {
      connections: 16,
      seconds: quick ? 2 : 10,
    })
    return {
      'GB/s': result.bytesPerSec / 1e9,
      'req/s': result.requestsPerSec,
      ...(result.errors && { errors: result.errors }),
    }
  },
  primary: 'GB/s',
}
