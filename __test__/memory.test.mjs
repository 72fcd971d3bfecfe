// Memory after an attack: the server (its own process) gives back what an attack made it take.
// With glibc's malloc the tokio workers' arenas kept it (70 → 272 MiB a minute after the attack);
// the addon's jemalloc with a background purging thread returns it (ARCHITECTURE.md).
import test from 'ava'
import { needs, onPlatforms, h2loadTool, pythonWith } from './helpers.mjs'
import { measureAttack } from '../benchmark/lib/attack.mjs'

const python = pythonWith('h2', 'python3-h2')
const linux = onPlatforms(['linux'], 'it reads /proc and connects from 127.0.0.2 and up', test)

needs(python, needs(h2loadTool, linux))('RSS is back within 20 % + 8 MiB of the start 30 s after a mixed attack', async (t) => {
  t.timeout(240_000)
  // Half the benchmark's counts for 20 s: slowloris and refused connections from 39 addresses,
  // WebSocket ping floods, short requests, h2load, stalled h2 streams, aborted uploads.
  const result = await measureAttack({
    seconds: 20,
    settle: 30,
    every: 5,
    scale: 0.5,
    python: python.path,
    h2load: h2loadTool.path,
    log: (line) => t.log(line),
  })
  const end = result.curve.at(-1)
  t.true(result.peakMiB > result.startMiB + 20, `the attack should make the server take memory (start ${result.startMiB}, peak ${result.peakMiB} MiB)`)
  t.is(end.fds, result.startFds, 'every connection is closed')
  const bound = result.startMiB * 1.2 + 8
  t.true(end.rssMiB <= bound, `RSS ${end.rssMiB} MiB 30 s after the attack; start ${result.startMiB} MiB, bound ${bound.toFixed(1)} MiB`)
})
