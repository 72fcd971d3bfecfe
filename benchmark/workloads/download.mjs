// One large download with curl: throughput, and the server's RSS growth while it streams.
import { run, peakRss } from '../lib/proc.mjs'

const GiB = 1024 ** 3

export default {
  name: 'download-1GiB',
  fixtures: (quick) => ({ 'big.bin': quick ? GiB / 4 : GiB }),
  peers: ['floodgate', 'node-http', 'fastify', 'nginx'],
  async run({ port, pids }) {
    const url = `http://127.0.0.1:${port}/stream/files/big.bin`
    const { result, before, peak } = await peakRss(pids, () =>
      run('curl', ['-s', '-o', '/dev/null', '-w', '%{size_download} %{time_total}', url]),
    )
    const [bytes, seconds] = result.stdout.trim().split(' ').map(Number)
    return {
      'GB/s': bytes / seconds / 1e9,
      'RSS growth MiB': (peak - before) / 1024 ** 2,
      'peak RSS MiB': peak / 1024 ** 2,
    }
  },
  primary: 'GB/s',
}
