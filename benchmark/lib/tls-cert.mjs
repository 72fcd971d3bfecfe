// A self-signed certificate for the TLS workloads, made once per run with openssl.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'

let made

/** { TLS_CERT, TLS_KEY } paths for the servers' environment; throws when openssl is missing. */
export function tlsEnv() {
  if (made) return made
  const dir = mkdtempSync(join(tmpdir(), 'floodgate-bench-tls-'))
  const cert = join(dir, 'cert.pem')
  const key = join(dir, 'key.pem')
  const args = ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-keyout', key, '-out', cert]
  const result = spawnSync('openssl', args, { stdio: 'ignore' })
  if (result.status !== 0) throw new Error('openssl is needed for the TLS workloads (apt-get install openssl)')
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }))
  made = { TLS_CERT: cert, TLS_KEY: key }
  return made
}
