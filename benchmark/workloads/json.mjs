// Small JSON responses from a JS handler: requests/s and p99 at 100 connections (wrk -t2 -c100).
// nginx answers from its config (no application code): the ceiling of this machine under wrk.
import { wrk } from '../lib/wrk.mjs'

export default {
  name: 'json-small-c100',
  fixtures: {},
  peers: ['floodgate', 'node-http', 'fastify', 'nginx'],
  async run({ port, quick, warmup }) {
    const result = await wrk(`http://127.0.0.1:${port}/api/json`, {
      connections: 100,
      seconds: warmup ? 1 : quick ? 2 : 10,
    })
    return {
      'req/s': result.requestsPerSec,
      'p50 ms': result.p50Ms,
      'p99 ms': result.p99Ms,
      ...(result.errors && { errors: result.errors }),
    }
  },
  primary: 'req/s',
}
