// Alternates floodgate and nginx on the 64 MiB × 16 workload: GB/s and server CPU s/GB per round.
import { PEERS } from './lib/peers.mjs'
import { makeFixtures } from './lib/fixtures.mjs'
import files from './workloads/files.mjs'

const rounds = Number(process.argv[2] ?? 3)
const fixture = makeFixtures({ '64m.bin': 64 * 1024 * 1024 })
for (let round = 0; round < rounds; round++) {
  for (const name of ['floodgate', 'nginx']) {
    const peer = PEERS.find((p) => p.name === name)
    const server = await peer.start({ ROOT: fixture.root })
    await files.run({ port: server.port, pids: server.pids, quick: true })
    const result = await files.run({ port: server.port, pids: server.pids, quick: false })
    console.log(name, result['GB/s'].toFixed(2), 'GB/s', result['server CPU s/GB'].toFixed(3), 's/GB')
    await server.stop()
  }
}
fixture.cleanup()
