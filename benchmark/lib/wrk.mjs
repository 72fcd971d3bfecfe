// wrk runs and the parsing of its report.
import { run } from './proc.mjs'

const UNITS = { '': 1, K: 1e3, M: 1e6, G: 1e9, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3, TB: 1024 ** 4, B: 1 }

function toMs(value, unit) {
  return Number(value) * { us: 0.001, ms: 1, s: 1000, m: 60_000 }[unit]
}

/** Runs wrk against `url`; returns { requestsPerSec, bytesPerSec, bytesRead, p50Ms, p99Ms, errors }. */
export async function wrk(url, { threads = 2, connections = 16, seconds = 10 } = {}) {
  const args = [`-t${threads}`, `-c${connections}`, `-d${seconds}s`, '--timeout', '60s', '--latency', url]
  const { stdout, code, stderr } = await run('wrk', args, { timeout: (seconds + 30) * 1000 })
  if (code !== 0) throw new Error(`wrk failed: ${stderr || stdout}`)
  const requests = /Requests\/sec:\s+([\d.]+)/.exec(stdout)
  const transfer = /Transfer\/sec:\s+([\d.]+)([KMGT]?B)/.exec(stdout)
  const read = /requests in [\d.]+\w+, ([\d.]+)([KMGT]?B) read/.exec(stdout)
  const p50 = /\s50%\s+([\d.]+)(us|ms|s|m)/.exec(stdout)
  const p99 = /\s99%\s+([\d.]+)(us|ms|s|m)/.exec(stdout)
  const errors = /Socket errors: (.*)/.exec(stdout)
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(stdout)
  return {
    requestsPerSec: requests ? Number(requests[1]) : 0,
    bytesPerSec: transfer ? Number(transfer[1]) * UNITS[transfer[2]] : 0,
    bytesRead: read ? Number(read[1]) * UNITS[read[2]] : 0,
    p50Ms: p50 ? toMs(p50[1], p50[2]) : null,
    p99Ms: p99 ? toMs(p99[1], p99[2]) : null,
    errors: [errors?.[1], non2xx && `non-2xx ${non2xx[1]}`].filter(Boolean).join('; ') || null,
  }
}
