// One large download with curl, several times: the median throughput, the server's CPU seconds
// per GB over all of them, and its RSS growth while it streams. (One download is noisy: which
// core the client lands on, page-cache state; the median of several is the figure.)
import { run, peakRss, cpuSeconds } from '../lib/proc.mjs'

const GiB = 1024 ** 3

export default {
  name: 'download-1GiB',
  fixtures: (quick) => ({ 'big.bin': quick ? GiB / 4 : GiB }),
  peers: ['floodgate', 'node-http', 'fastify', 'nginx'],
  async run({ port, pids, quick, warmup }) {
    const url = `http://127.0.0.1:${port}/stream/files/big.bin`
    const downloads = warmup ? 1 : quick ? 3 : 7
    const rates = []
    let bytesTotal = 0
    const cpuBefore = cpuSeconds(pids())
    const { before, peak } = await peakRss(pids, async () => {
      for (let i = 0; i < downloads; i++) {
        const { stdout } = await run('curl', ['-s', '-o', '/dev/null', '-w', '%{size_download} %{time_total}', url])
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
  },
  primary: 'GB/s',
}
