// Where the bench finds Centrifugo v6.9.1: $CENTRIFUGO, else ~/go/bin/centrifugo, else its own
// copy in benchmark/.tools/bin, which it builds there with `go install` the first time a workload
// needs it (about four minutes). Without Go the peer is reported as skipped, naming what to install.
import { existsSync, mkdirSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const CENTRIFUGO_MODULE = 'github.com/centrifugal/centrifugo/v6@v6.9.1'
const own = fileURLToPath(new URL('../.tools/bin/', import.meta.url))

let found
/** The binary's path, or a sentence saying why there is none (the skip reason). */
export function centrifugoBinary() {
  if (found) return found
  const candidates = [process.env.CENTRIFUGO, join(homedir(), 'go', 'bin', 'centrifugo'), join(own, 'centrifugo')].filter(Boolean)
  const existing = candidates.find(existsSync)
  if (existing) return (found = existing)
  if (spawnSync('go', ['version']).status !== 0) return `no Centrifugo and no Go to build it (install Go, or set CENTRIFUGO to a centrifugo v6 binary)`
  mkdirSync(own, { recursive: true })
  console.error(`building Centrifugo into ${own} (go install ${CENTRIFUGO_MODULE}, a few minutes)…`)
  const built = spawnSync('go', ['install', CENTRIFUGO_MODULE], { env: { ...process.env, GOBIN: own }, stdio: 'inherit', timeout: 1_200_000 })
  if (built.status !== 0 || !existsSync(join(own, 'centrifugo'))) return `go install ${CENTRIFUGO_MODULE} failed`
  return (found = join(own, 'centrifugo'))
}

/** `true`, or why Centrifugo cannot run here (for a peer's `available`). */
export const centrifugoReady = () => (centrifugoBinary().startsWith('/') ? true : centrifugoBinary())
