// WebSocket connect rate with cluster-wide caps on vs off, one instance: 5,000 connections
// (quick: 1,000) opened by the pinned load client under per-user and per-address caps, once with
// the caps per process and once with them as Redis leases (one Lua call per connect). The
// lease's cost is the connect rate lost to it (target: at most 20 %). Each is measured three
// times (quick: once), alternating, and the medians compared: one run lasts well under a second.
import { fileURLToPath } from 'node:url'
import { wsLoad, SOURCES } from '../lib/ws-load.mjs'
import { startServer, stopServer, cpuSeconds } from '../lib/proc.mjs'
import { startRedis, redisAvailable } from '../lib/redis.mjs'

const SERVER = fileURLToPath(new URL('../servers/floodgate-cluster.mjs', import.meta.url))

async function connectRate(env, sockets) {
  const { child, port } = await startServer(process.execPath, [SERVER], { env })
  try {
    const before = cpuSeconds([child.pid])
    const load = await wsLoad('idle', { url: `ws://127.0.0.1:${port}/ws/capped`, connections: sockets, sources: SOURCES, 'timeout-ms': 120_000 })
    const connected = await load.connected
    const cpu = cpuSeconds([child.pid]) - before
    load.child.stdin.end('done\n')
    const result = await load.result
    if (connected < sockets) throw new Error(`${connected}/${sockets} connected: ${result.error}`)
    return { rate: connected / result.connectSeconds, cpuPerConnect: (cpu / connected) * 1e6 }
  } finally {
    await stopServer(child)
  }
}

export default {
  name: 'cluster-connect',
  fixtures: {},
  peers: ['floodgate'],
  async run({ quick, warmup }) {
    if (warmup) return {}
    const available = redisAvailable()
    if (available !== true) throw new Error(available)
    const sockets = quick ? 1000 : 5000
    const rounds = quick ? 1 : 3
    const median = (values) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)]
    const redis = await startRedis()
    try {
      const [locals, leaseds] = [[], []]
      const before = cpuSeconds([redis.pid])
      for (let round = 0; round < rounds; round++) {
        locals.push(await connectRate({}, sockets))
        leaseds.push(await connectRate({ REDIS: redis.url, PREFIX: `bench${round}` }, sockets))
      }
      const [local, leased] = [median(locals.map((r) => r.rate)), median(leaseds.map((r) => r.rate))]
      const [localCpu, leasedCpu] = [median(locals.map((r) => r.cpuPerConnect)), median(leaseds.map((r) => r.cpuPerConnect))]
      return {
        'connects/s': leased,
        'connects/s without cluster': local,
        'lease cost %': (1 - leased / local) * 100,
        'server CPU µs/connect': leasedCpu,
        'server CPU µs/connect without cluster': localCpu,
        'redis CPU s': (cpuSeconds([redis.pid]) - before) / rounds,
      }
    } finally {
      await redis.stop()
    }
  },
  primary: 'connects/s',
}
