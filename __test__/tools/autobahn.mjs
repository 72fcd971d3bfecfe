// The Autobahn TestSuite (`fuzzingclient`) against a floodgate echo route: `npm run autobahn`.
//
// Installs the suite (Python 2.7 code) into a cache folder the first time, starts an echo
// server in this process, runs the fuzzing client against it, and fails on any case whose
// behaviour is not OK or INFORMATIONAL (or NON-STRICT with a reason in ALLOWED below), or
// whose close behaviour is not OK or INFORMATIONAL. The HTML/JSON report stays in the report
// folder (default target/autobahn; CI keeps it as an artifact).
//
// Environment:
//   AUTOBAHN_PYTHON  a Python 2.7 interpreter (default: python2.7 / python2 on PATH, then pyenv's 2.7.*)
//   AUTOBAHN_CACHE   where the suite is installed (default ~/.cache/floodgate-autobahn/25.10.1)
//   AUTOBAHN_REPORT  the report folder (default target/autobahn)
//   AUTOBAHN_CASES   comma-separated case patterns (default: 1.* to 7.* and 10.*)
//   AUTOBAHN_FULL=1  adds 9.* (limits and performance: messages up to 16 MiB, several minutes)
//
// A missing Python 2.7 skips the run naming what to install; under CI=true it fails.
import { spawnSync, spawn } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, writeFileSync, readdirSync, rmSync } from 'node:fs'
import { homedir } from 'node:os'
import { join, resolve, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
const inCI = ['true', '1'].includes(String(process.env.CI).toLowerCase())

const SUITE_VERSION = '25.10.1'
/** The suite's own pins: the newest of each that still runs on Python 2.7. */
const REQUIREMENTS = [
  'autobahn[twisted]==0.10.9',
  'txaio<=2.1.0',
  'Twisted==20.3.0',
  'jinja2<3',
  'markupsafe<2',
  'zope.interface<6',
  'pyopenssl==21.0.0',
  'cryptography==3.3.2',
  'unittest2',
]
const NO_DEPS = ['wsaccel==0.6.2', `autobahntestsuite==${SUITE_VERSION}`]

/**
 * NON-STRICT results accepted, with the reason. Each key is a case id; nothing is allowed
 * without a written reason.
 */
const ALLOWED = {}

const DEFAULT_CASES = ['1.*', '2.*', '3.*', '4.*', '5.*', '6.*', '7.*', '10.*']

function python2() {
  const candidates = []
  if (process.env.AUTOBAHN_PYTHON) candidates.push(process.env.AUTOBAHN_PYTHON)
  else {
    candidates.push('python2.7', 'python2')
    const pyenvRoot = process.env.PYENV_ROOT ?? join(homedir(), '.pyenv')
    const versions = join(pyenvRoot, 'versions')
    if (existsSync(versions)) {
      for (const version of readdirSync(versions).filter((v) => v.startsWith('2.7')).sort().reverse()) {
        candidates.push(join(versions, version, 'bin', 'python'))
      }
    }
  }
  for (const candidate of candidates) {
    const probe = spawnSync(candidate, ['-c', 'import sys; print("%d.%d" % sys.version_info[:2])'], { encoding: 'utf8' })
    if (probe.status === 0 && probe.stdout.trim() === '2.7') return candidate
  }
  return undefined
}

function install(python, dir) {
  const marker = join(dir, '.floodgate-installed')
  if (existsSync(marker)) return
  console.log(`autobahn: installing AutobahnTestSuite ${SUITE_VERSION} into ${dir}`)
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(dir, { recursive: true })
  const pip = (args) => {
    const run = spawnSync(python, ['-m', 'pip', 'install', '--disable-pip-version-check', '-q', '--target', dir, ...args], { stdio: 'inherit' })
    if (run.status !== 0) throw new Error(`pip install ${args.join(' ')} failed (exit ${run.status})`)
  }
  pip(REQUIREMENTS)
  pip(['--no-deps', ...NO_DEPS])
  // zope.interface is installed without its namespace package's __init__.
  writeFileSync(join(dir, 'zope', '__init__.py'), '')
  writeFileSync(marker, `${SUITE_VERSION}\n`)
}

async function startEcho(compressed) {
  const { Server, StreamingApp } = require(join(root, 'index.js'))
  const server = new Server()
  // Limits raised for the suite's 16 MiB messages and its bursts of thousands of frames.
  const app = new StreamingApp({
    rateLimitRequests: 0,
    wsMaxMessageSize: '20mb',
    wsMaxMessagesPerSecond: 0,
    wsMaxBytesPerSecond: 0,
    wsIdleTimeout: 0,
    wsPingInterval: 0,
    wsMaxConnectionsPerIp: 0,
    wsMaxConnectionsPerUser: 0,
  })
  const echo = { message: (ws, data) => ws.send(data), queueMessages: 100_000, queueBytes: '64mb' }
  app.ws('/', echo)
  if (compressed) app.ws('/compressed', { ...echo, compression: true })
  server.mount('/', app)
  const { port } = await server.listen({ port: 0, host: '127.0.0.1' })
  return { server, port }
}

function verdicts(reportDir, agent) {
  const index = JSON.parse(readFileSync(join(reportDir, 'index.json'), 'utf8'))[agent]
  const failures = []
  const counts = {}
  for (const [id, result] of Object.entries(index)) {
    counts[result.behavior] = (counts[result.behavior] ?? 0) + 1
    const okBehavior = ['OK', 'INFORMATIONAL'].includes(result.behavior) || (result.behavior === 'NON-STRICT' && ALLOWED[id])
    const okClose = ['OK', 'INFORMATIONAL'].includes(result.behaviorClose)
    if (!okBehavior || !okClose) failures.push(`${id}: ${result.behavior} (close: ${result.behaviorClose})`)
  }
  return { counts, failures, total: Object.keys(index).length }
}

async function main() {
  const python = python2()
  if (!python) {
    const message = 'autobahn: no Python 2.7 (set AUTOBAHN_PYTHON, or install one: `pyenv install 2.7.18`, or Debian/Ubuntu `python2`)'
    if (inCI) throw new Error(message)
    console.log(`SKIP ${message}`)
    return
  }
  const cache = process.env.AUTOBAHN_CACHE ?? join(homedir(), '.cache', 'floodgate-autobahn', SUITE_VERSION)
  install(python, cache)
  const reportDir = resolve(process.env.AUTOBAHN_REPORT ?? join(root, 'target', 'autobahn'))
  rmSync(reportDir, { recursive: true, force: true })
  mkdirSync(reportDir, { recursive: true })

  const cases = process.env.AUTOBAHN_CASES?.split(',') ?? DEFAULT_CASES
  if (process.env.AUTOBAHN_FULL === '1') cases.push('9.*')
  // 12.* and 13.* need permessage-deflate: they run against the compressed route.
  const compressionCases = cases.filter((c) => c.startsWith('12.') || c.startsWith('13.'))
  const plainCases = cases.filter((c) => !compressionCases.includes(c))
  const { server, port } = await startEcho(compressionCases.length > 0)
  const servers = []
  if (plainCases.length) servers.push({ agent: 'floodgate', url: `ws://127.0.0.1:${port}/`, cases: plainCases })
  if (compressionCases.length) servers.push({ agent: 'floodgate-deflate', url: `ws://127.0.0.1:${port}/compressed`, cases: compressionCases })
  let failed = []
  try {
    for (const target of servers) {
      const spec = {
        outdir: reportDir,
        servers: [{ agent: target.agent, url: target.url }],
        cases: target.cases,
        'exclude-cases': [],
        'exclude-agent-cases': {},
      }
      const specPath = join(reportDir, `spec-${target.agent}.json`)
      writeFileSync(specPath, JSON.stringify(spec, null, 2))
      const started = Date.now()
      console.log(`autobahn: ${target.agent} ${target.url} cases ${target.cases.join(' ')}`)
      const code = await new Promise((done) => {
        const child = spawn(python, ['-c', 'from autobahntestsuite.wstest import run; run()', '-m', 'fuzzingclient', '-s', specPath], {
          cwd: reportDir,
          env: { ...process.env, PYTHONPATH: cache },
          stdio: ['ignore', 'ignore', 'inherit'],
        })
        child.on('exit', (status) => done(status))
      })
      if (code !== 0) throw new Error(`wstest exited with ${code}`)
      const { counts, failures, total } = verdicts(reportDir, target.agent)
      console.log(`autobahn: ${target.agent}: ${total} cases in ${((Date.now() - started) / 1000).toFixed(0)} s: ${JSON.stringify(counts)}`)
      failed = failed.concat(failures)
    }
  } finally {
    await server.close({ drain: 0 })
  }
  console.log(`autobahn: report in ${join(reportDir, 'index.html')}`)
  if (failed.length) {
    console.error(`autobahn: ${failed.length} case(s) not passing:\n  ${failed.join('\n  ')}`)
    process.exitCode = 1
  }
}

main().catch((error) => {
  console.error(error)
  process.exitCode = 1
})
