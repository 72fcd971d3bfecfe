// `node benchmark/attack-memory.mjs [--seconds=40] [--settle=60] [--scale=1]`: the server's RSS
// before, during and after a mixed attack (slowloris and connection exhaustion from 127.0.0.2..40,
// WebSocket ping floods, short requests, an h2 stream flood, stalled h2 streams, aborted uploads).
// The server runs in its own process with --expose-gc and collects every second. Prints the curve
// (every 5 s for a minute after the attack ends) and one JSON line.
import { execFileSync } from 'node:child_process'
import { measureAttack } from './lib/attack.mjs'

const arg = (name, fallback) => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback)
const result = await measureAttack({
  seconds: arg('seconds', 40),
  settle: arg('settle', 60),
  scale: arg('scale', 1),
  log: (line) => console.error(line),
  // --env=NAME=value (repeatable): the server's environment, e.g. MALLOC_ARENA_MAX=2.
  env: Object.fromEntries(process.argv.filter((a) => a.startsWith('--env=')).map((a) => a.slice(6).split(/=(.*)/s).slice(0, 2))),
  // --trim-probe: at the end, call glibc's malloc_trim(0) in the server through gdb and show
  // the RSS it gives back (how much of what is held is free memory glibc kept).
  atEnd: process.argv.includes('--trim-probe')
    ? (server) => {
        const before = server.rss()
        execFileSync('gdb', ['-p', String(server.pid), '-batch', '-ex', 'call (int)malloc_trim(0)'], { stdio: 'ignore', timeout: 60_000 })
        console.error(`malloc_trim(0) through gdb: ${(before / 2 ** 20).toFixed(1)} -> ${(server.rss() / 2 ** 20).toFixed(1)} MiB`)
      }
    : undefined,
})
const last = result.curve.at(-1).rssMiB
console.error(`after ${result.curve.at(-1).t} s: ${last} MiB = ${((last / result.startMiB - 1) * 100).toFixed(0)} % over the start`)
console.log(JSON.stringify(result))
process.exit(0)
