// Benchmark fixture files, made once per run in a temp folder.
import { mkdtempSync, openSync, writeSync, closeSync, rmSync, chmodSync } from 'node:fs'
import { tmpdir } from 'node:os'
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
  return { root, cleanup: () => rmSync(root, { recursive: true, force: true }) }
}
