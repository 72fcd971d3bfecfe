// Cross-instance fan-out: 3 instances with `cluster` on one redis-server, 10,000 WebSocket
// subscribers spread over them (quick: 1,000), a publisher on the first instance at 100 events/s
// (quick: 1,000/s) for 5 s (quick: 2 s), so two thirds of every event crosses Redis. Delivered
// share, p50/p99 publish-to-receive latency (the worst instance's), and the CPU of the three
// servers and Redis; delivered messages per CPU-second is the primary figure. Peer: Socket.IO 4
// with @socket.io/redis-adapter (servers/socketio-cluster.mjs), the same load client speaking
// Engine.IO (`--socketio 1`). Centrifugo with its Redis engine is not part of the run.
import { fileURLToPath } from 'node:url'
import { wsLoad, SOURCES } from '../lib/ws-load.mjs'
import { startServer, stopServer, cpuSeconds } from '../lib/proc.mjs'
import { startRedis, redisAvailable } from '../lib/redis.mjs'

const SERVERS = {
  floodgate: { script: '../servers/floodgate-cluster.mjs', path: '/ws/bench', socketio: 0 },
  'socket.io': { script: '../servers/socketio-cluster.mjs', path: '/socket.io/?EIO=4&transport=websocket', socketio: 1 },
}
const INSTANCES = 3

export default {
  name: 'cluster-fanout',
  fixtures: {},
  peers: ['floodgate', 'socket.io'],
  async run({ quick, warmup, peer }) {
    if (warmup) return {}
    const available = redisAvailable()
    if (available !== true) throw new Error(available)
    const sockets = quick ? 1000 : 10_000
    const rate = quick ? 1000 : 100
    const seconds = quick ? 2 : 5
    const { script, path, socketio } = SERVERS[peer]
    const redis = await startRedis()
    const servers = []
    try {
      for (let i = 0; i < INSTANCES; i++) {
        servers.push(await startServer(process.execPath, [fileURLToPath(new URL(script, import.meta.url))], { env: { REDIS: redis.url } }))
      }
      const each = Math.floor(sockets / INSTANCES)
      const expect = each * rate * seconds
      const loads = await Promise.all(
        servers.map(({ port }) =>
          wsLoad(
            'fanout',
            { url: `ws://127.0.0.1:${port}${path}`, connections: each, sources: SOURCES, expect, 'idle-ms': 2000, 'timeout-ms': (seconds + 60) * 1000, socketio },
            { timeout: (seconds + 120) * 1000 },
          ),
        ),
      )
      const connected = await Promise.all(loads.map((load) => load.connected))
      if (connected.some((n) => n < each)) throw new Error(`subscribed: ${connected.join(', ')} of ${each} each`)
      // Every instance ready before the first event: floodgate subscribed to `bench` in Redis,
      // Socket.IO with every socket joined to its namespace.
      const ready = async (port) =>
        peer === 'floodgate'
          ? (await (await fetch(`http://127.0.0.1:${port}/api/stats`)).json()).cluster.patterns === 1
          : (await (await fetch(`http://127.0.0.1:${port}/api/count`)).json()).sockets === each
      for (const { port } of servers) {
        for (let i = 0; i < 250 && !(await ready(port)); i++) await new Promise((resolve) => setTimeout(resolve, 20))
      }
      const pids = () => [...servers.map(({ child }) => child.pid), redis.pid]
      const before = cpuSeconds(pids())
      const response = await fetch(`http://127.0.0.1:${servers[0].port}/api/publish?rate=${rate}&seconds=${seconds}`)
      if (!response.ok) throw new Error(`/api/publish answered ${response.status}`)
      const results = await Promise.all(loads.map((load) => load.result))
      const cpu = cpuSeconds(pids()) - before
      const delivered = results.reduce((sum, r) => sum + r.delivered, 0)
      return {
        'delivered/CPU-s': delivered / cpu,
        'delivered %': (delivered / (expect * INSTANCES)) * 100,
        'p50 ms': Math.max(...results.map((r) => r.p50Ms)),
        'p99 ms': Math.max(...results.map((r) => r.p99Ms)),
        'servers + redis CPU s': cpu,
      }
    } finally {
      await Promise.all(servers.map(({ child }) => stopServer(child)))
      await redis.stop()
    }
  },
  primary: 'delivered/CPU-s',
}
