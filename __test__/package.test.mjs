// The package as users get it: npm pack tarballs installed into an empty folder, run with no
// Rust toolchain on PATH; and the loader's message when no binary matches.
import test from 'ava'
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdtempSync, mkdirSync, copyFileSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const root = fileURLToPath(new URL('..', import.meta.url))
const { platformName } = require('../loader.js')
const platform = platformName()
const version = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version
const work = mkdtempSync(join(tmpdir(), 'floodgate-pack-'))
test.after.always(() => rmSync(work, { recursive: true, force: true }))

const npm = (args, cwd) =>
  execFileSync('npm', [...args, '--no-audit', '--no-fund', '--loglevel=error'], { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })

let tarballs
test.before(() => {
  const packs = join(work, 'packs')
  mkdirSync(packs)
  npm(['pack', '--ignore-scripts', '--pack-destination', packs], root)
  // The platform package as the CLI lays it out: its package.json and the .node file only.
  const platformDir = join(work, `platform-${platform}`)
  mkdirSync(platformDir)
  copyFileSync(join(root, 'npm', platform, 'package.json'), join(platformDir, 'package.json'))
  copyFileSync(join(root, `floodgate.${platform}.node`), join(platformDir, `floodgate.${platform}.node`))
  npm(['pack', '--pack-destination', packs], platformDir)
  tarballs = { main: join(packs, `floodgate-${version}.tgz`), platform: join(packs, `floodgate-${platform}-${version}.tgz`) }
})

const listing = (tarball) => execFileSync('tar', ['tzf', tarball], { encoding: 'utf8' }).trim().split('\n')

test('the main tarball holds the API, types and loader — no Rust, tests or build output', (t) => {
  const files = listing(tarballs.main)
  const api = ['index', 'options', 'streaming-app', 'server', 'dashboard', 'bridge', 'request', 'results', 'undici-state', 'wire', 'response', 'node-adapter', 'ws', 'native-batch', 'loader', 'cli']
  for (const wanted of [...api.flatMap((name) => [`${name}.js`, `${name}.d.ts`]), 'binding.js', 'binding.d.ts', 'dashboard/page.html', 'dashboard/page.css', 'dashboard/page.js', 'package.json', 'README.md']) {
    t.true(files.includes(`package/${wanted}`), wanted)
  }
  t.deepEqual(files.filter((f) => /\.(rs|node|ts)$/.test(f) && !f.endsWith('.d.ts')), [])
  t.deepEqual(files.filter((f) => /__test__|crates\/|target\/|benchmark\//.test(f)), [])
})

test('the platform tarball holds only its package.json and .node file', (t) => {
  t.deepEqual(listing(tarballs.platform).sort(), [`package/floodgate.${platform}.node`, 'package/package.json'])
})

const script = `
  const { Server, StreamingApp } = require('floodgate')
  const server = new Server()
  server.mount('/api', () => Response.json({ installed: true }))
  server.mount('/_floodgate', server.dashboard())
  server.listen({ port: 0 }).then(async ({ url }) => {
    const res = await fetch(url + '/api/x')
    const page = await (await fetch(url + '/_floodgate/')).text()
    console.log(JSON.stringify({ ...(await res.json()), dashboard: page.includes('<canvas id="chart-open"') }))
    await server.close()
  })`

test('installed from the tarballs into an empty folder, it runs with no Rust toolchain', (t) => {
  const app = join(work, 'app')
  mkdirSync(app)
  writeFileSync(join(app, 'package.json'), '{"name":"app","private":true}')
  npm(['install', tarballs.main, tarballs.platform], app)
  const result = spawnSync(process.execPath, ['-e', script], {
    cwd: app,
    encoding: 'utf8',
    env: { PATH: '/usr/bin:/bin', HOME: app },
    timeout: 20_000,
  })
  t.not(spawnSync('sh', ['-c', 'command -v cargo || command -v rustc'], { env: { PATH: '/usr/bin:/bin' } }).status, 0, 'no Rust on that PATH')
  t.is(result.stderr, '')
  t.is(result.stdout.trim(), '{"installed":true,"dashboard":true}', 'the dashboard page ships in the package')
})

test('without a matching binary the loader names the platform and the package it needs', (t) => {
  const app = join(work, 'bare')
  mkdirSync(app)
  writeFileSync(join(app, 'package.json'), '{"name":"bare","private":true}')
  npm(['install', tarballs.main], app)
  const result = spawnSync(process.execPath, ['-e', "require('floodgate')"], { cwd: app, encoding: 'utf8' })
  t.not(result.status, 0)
  t.regex(result.stderr, new RegExp(`no native binary for ${platform}`))
  t.regex(result.stderr, new RegExp(`floodgate-${platform}`))
  t.regex(result.stderr, /Prebuilt packages exist for linux-x64-gnu, linux-arm64-gnu/)
})
