// 100 MiB streamed from a JS async generator (64 KiB chunks), one curl download: GB/s.
import { run } from '../lib/proc.mjs'

export default {
  name: 'generator-100MiB',
  fixtures: {},
  peers: ['floodgate', 'node-http'],
  async run({ port }) {
    const url = `http://127.0.0.1:${port}/stream/generate`
    const { stdout } = await run('curl', ['-s', '-o', '/dev/null', '-w', '%{size_download} %{time_total}', url])
    const [bytes, seconds] = stdout.trim().split(' ').map(Number)
    if (bytes !== 100 * 1024 * 1024) throw new Error(`got ${bytes} bytes`)
    return { 'GB/s': bytes / seconds / 1e9 }
  },
  primary: 'GB/s',
}
