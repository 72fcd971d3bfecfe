// Benchmark fixture files, made once per run in a temp folder.
import { mkdtempSync, openSync, writeSync, closeSync, rmSync, chmodSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'

export function makeFixtures(sizes) {
  const root = mkdtempSync(join(tmpdir(), 'floodgate-bench-'))
  chmodSync(root, 0o755) // nginx workers run as an unprivileged user
  const block = Buffer.alloc(1024 * 1024, 'floodgate benchmark data ')
  for (const [name, bytes] of Object.entries(sizes)) {
    const fd = openSync(join(root, name), 'w')
    for (let written = 0; written < bytes; written += block.length) {
      writeSync(fd, block, 0, Math.min(block.length, bytes - written))
    }
    closeSync(fd)
  }
  // Flush the fixtures' dirty pages now, so no peer pays for their writeback mid-run.
  spawnSync('sync')
  return { root, cleanup: () => rmSync(root, { recursive: true, force: true }) }
}
