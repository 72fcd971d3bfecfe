// A 256 MiB request body written to disk (curl -T): throughput and server RSS growth.
// Compared like for like: neither server syncs (the Node peer never does; floodgate's upload
// mount is told `fsync: false`). floodgate's default, which syncs each upload to disk before
// it appears under its name, is measured too ('GB/s fsync').
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { run, peakRss } from '../lib/proc.mjs'

const MiB = 1024 ** 2

export default {
  name: 'upload-256MiB',
  fixtures: (quick) => ({ 'body.bin': (quick ? 64 : 256) * MiB }),
  peers: ['node-http', 'floodgate'],
  // Disk writeback makes single runs noisy: the median of three uploads (one in a quick run).
  async run({ port, pids, root, uploads, peer, quick, warmup }) {
    const runs = warmup || quick ? 1 : 3
    const result = await median({ port, pids, root, uploads }, 'up', runs)
    if (peer === 'floodgate' && !warmup) result['GB/s fsync'] = (await median({ port, pids, root, uploads }, 'up-sync', runs))['GB/s']
    return result
  },
  primary: 'GB/s',
}

/**
 * The median of `count` uploads under `/stream/<mount>`. Each received file is deleted before
 * the next upload: with earlier uploads left in the page cache, whichever peer ran later was
 * up to 4× slower here, whichever it was.
 */
async function median({ port, pids, root, uploads }, mount, count) {
  const runs = []
  for (let i = 0; i < count; i++) {
    spawnSync('sync') // each upload starts with no dirty pages pending writeback
    const name = `received-${Date.now()}-${i}.bin`
    const url = `http://127.0.0.1:${port}/stream/${mount}/${name}`
    const { result, before, peak } = await peakRss(pids, () =>
      run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code} %{size_upload} %{time_total}', '-T', join(root, 'body.bin'), url]),
    )
    const [status, bytes, seconds] = result.stdout.trim().split(' ').map(Number)
    if (status !== 201) throw new Error(`upload answered ${status}`)
    rmSync(join(uploads, name), { force: true })
    runs.push({ 'GB/s': bytes / seconds / 1e9, 'RSS growth MiB': (peak - before) / MiB })
  }
  runs.sort((a, b) => a['GB/s'] - b['GB/s'])
  return { ...runs[Math.floor(runs.length / 2)], 'RSS growth MiB': Math.max(...runs.map((r) => r['RSS growth MiB'])) }
}

export function uploadDir() {
  const dir = mkdtempSync(join(tmpdir(), 'floodgate-bench-up-'))
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) }
}
