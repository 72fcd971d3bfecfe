// 100 MiB streamed from a JS async generator (64 KiB chunks) to curl: GB/s, the median of eleven
// downloads (one takes ~40 ms here, short enough for a single run to be mostly noise).
import { run } from '../lib/proc.mjs'

export default {
  name: 'generator-100MiB',
  fixtures: {},
  peers: ['floodgate', 'node-http'],
  async run({ port }) {
    const url = `http://127.0.0.1:${port}/stream/generate`
    const rates = []
    for (let i = 0; i < 11; i++) {
      const { stdout } = await run('curl', ['-s', '-o', '/dev/null', '-w', '%{size_download} %{time_total}', url])
      const [bytes, seconds] = stdout.trim().split(' ').map(Number)
      if (bytes !== 100 * 1024 * 1024) throw new Error(`got ${bytes} bytes`)
      rates.push(bytes / seconds / 1e9)
    }
    rates.sort((a, b) => a - b)
    return { 'GB/s': rates[5] }
  },
  primary: 'GB/s',
}
