// One large download with curl, several times: the median throughput, the server's CPU seconds
// per GB over all of them, and its RSS growth while it streams. (One download is noisy: which
// core the client lands on, page-cache state; the median of several is the figure.)
import { run as runCommand, peakRss, cpuSeconds } from '../lib/proc.mjs'

const GiB = 1024 ** 3

/** The workload, in cleartext or (`tls`) over TLS 1.3 against the peers that speak it. */
export function downloadWorkload({ tls = false } = {}) {
  return {
    name: tls ? 'download-tls-1GiB' : 'download-1GiB',
    tls,
    fixtures: (quick) => ({ 'big.bin': quick ? GiB / 4 : GiB }),
    peers: tls ? ['floodgate', 'node-http', 'nginx'] : ['floodgate', 'node-http', 'fastify', 'nginx'],
    run: (options) => run({ ...options, tls }),
    primary: 'GB/s',
  }
}

export default downloadWorkload()

async function run({ port, pids, quick, warmup, tls }) {
  const url = `${tls ? 'https' : 'http'}://127.0.0.1:${port}/stream/files/big.bin`
  const downloads = warmup ? 1 : quick ? 3 : 7
  const rates = []
  let bytesTotal = 0
  const cpuBefore = cpuSeconds(pids())
  const { before, peak } = await peakRss(pids, async () => {
    for (let i = 0; i < downloads; i++) {
      const { stdout } = await runCommand('curl', ['-s', '-k', '-o', '/dev/null', '-w', '%{size_download} %{time_total}', url])
      const [bytes, seconds] = stdout.trim().split(' ').map(Number)
      if (!bytes) throw new Error(`download ${i + 1} got no bytes`)
      rates.push(bytes / seconds / 1e9)
      bytesTotal += bytes
    }
  })
  const cpu = cpuSeconds(pids()) - cpuBefore
  rates.sort((a, b) => a - b)
  return {
    'GB/s': rates[rates.length >> 1],
    'GB/s min–max': `${rates[0].toFixed(2)}–${rates[rates.length - 1].toFixed(2)}`,
    'server CPU s/GB': cpu / (bytesTotal / 1e9),
    'RSS growth MiB': (peak - before) / 1024 ** 2,
    'peak RSS MiB': peak / 1024 ** 2,
  }
}
