// multipart/form-data uploads (curl -F) into a folder: one 256 MiB file, and 1,000 × 64 KiB
// files in one request. For floodgate also tus: the 256 MiB file in 8 MiB PATCHes against one
// raw PUT of it, both sent from memory by the same Node client on one keep-alive connection
// (the file is read once before timing, so the client's file reads are in neither), without
// fsync and with it (floodgate's default), and the same upload by tus-js-client.
// floodgate's /stream/form (no fsync) against Fastify + @fastify/multipart
// writing each file to disk and hashing it (floodgate hashes every file too). GB/s of the body,
// files/s, the server's CPU seconds and RSS growth.
import { readFileSync, readdirSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import http from 'node:http'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { run, peakRss } from '../lib/proc.mjs'

const MiB = 1024 ** 2
const SMALL = 1000

/** CPU seconds (user + system) the server's processes have used so far. */
function cpuSeconds(pids) {
  let ticks = 0
  for (const pid of pids()) {
    try {
      const fields = spawnSync('cat', [`/proc/${pid}/stat`]).stdout.toString().split(') ')[1].split(' ')
      ticks += Number(fields[11]) + Number(fields[12])
    } catch {}
  }
  return ticks / 100
}

async function form({ port, pids, uploads }, args) {
  spawnSync('sync')
  const before = cpuSeconds(pids)
  const { result, before: rssBefore, peak } = await peakRss(pids, () =>
    run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code} %{size_upload} %{time_total}', ...args, `http://127.0.0.1:${port}/stream/form`]),
  )
  const cpu = cpuSeconds(pids) - before
  const [status, bytes, seconds] = result.stdout.trim().split(' ').map(Number)
  if (status !== 201) throw new Error(`form upload answered ${status}`)
  for (const name of readdirSync(uploads)) rmSync(join(uploads, name), { recursive: true, force: true })
  return { bytes, seconds, cpu, rss: (peak - rssBefore) / MiB }
}

// One keep-alive connection for the PUT and for the tus requests, as tus clients use.
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })

/** One request whose body is `body`; resolves { status, headers }. */
function send(port, method, path, headers, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, headers: { ...headers, 'content-length': String(body?.length ?? 0) }, agent }, (res) => {
      res.resume()
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers }))
    })
    req.on('error', reject)
    req.end(body)
  })
}

/** tus-js-client from the repository's dev dependencies, if installed. */
function tusClient() {
  try {
    return createRequire(new URL('../../package.json', import.meta.url))('tus-js-client')
  } catch {
    return null
  }
}

const PIECE = 8 * MiB
const TUS = { 'tus-resumable': '1.0.0' }

/** Seconds of one tus upload of `data` in 8 MiB PATCHes to `mount` by the bench's client. */
async function tusUpload(port, mount, data) {
  const started = performance.now()
  const created = await send(port, 'POST', mount, { ...TUS, 'upload-length': String(data.length), 'upload-metadata': `filename ${Buffer.from('tus.bin').toString('base64')}` })
  if (created.status !== 201) throw new Error(`tus POST answered ${created.status}`)
  for (let offset = 0; offset < data.length; offset += PIECE) {
    const patched = await send(port, 'PATCH', created.headers.location, { ...TUS, 'content-type': 'application/offset+octet-stream', 'upload-offset': String(offset) }, data.subarray(offset, offset + PIECE))
    if (patched.status !== 204) throw new Error(`tus PATCH answered ${patched.status}`)
  }
  return (performance.now() - started) / 1000
}

/** Seconds of the same upload by tus-js-client (8 MiB chunks, its own keep-alive agent). */
function tusJsUpload(tus, port, data) {
  const started = performance.now()
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(data, {
      endpoint: `http://127.0.0.1:${port}/stream/tus`,
      chunkSize: PIECE,
      metadata: { filename: 'tus-js.bin' },
      retryDelays: [0, 100], // a keep-alive connection the server closed meanwhile
      onSuccess: () => resolve((performance.now() - started) / 1000),
      onError: reject,
    })
    upload.start()
  })
}

/** GB/s of one raw PUT of `data` and of tus uploads of it in 8 MiB PATCHes, each from memory. */
async function tusVersusPut({ port, uploads }, data) {
  const clean = () => {
    for (const name of readdirSync(uploads)) rmSync(join(uploads, name), { recursive: true, force: true })
  }
  const rate = (seconds) => data.length / seconds / 1e9
  const timed = async (fn) => {
    spawnSync('sync')
    const seconds = await fn()
    clean()
    return rate(seconds)
  }
  const put = (path) => async () => {
    const started = performance.now()
    const stored = await send(port, 'PUT', path, {}, data)
    if (stored.status !== 201) throw new Error(`PUT answered ${stored.status}`)
    return (performance.now() - started) / 1000
  }
  const tus = tusClient()
  return {
    put: await timed(put('/stream/up/raw.bin')),
    tus: await timed(() => tusUpload(port, '/stream/tus', data)),
    tusJs: tus ? await timed(() => tusJsUpload(tus, port, data)) : NaN,
    putSync: await timed(put('/stream/up-sync/raw.bin')),
    tusSync: await timed(() => tusUpload(port, '/stream/tus-sync', data)),
  }
}

export default {
  name: 'multipart-upload',
  fixtures: (quick) => ({ 'big.bin': (quick ? 64 : 256) * MiB, ...Object.fromEntries(Array.from({ length: SMALL }, (_, i) => [`small-${i}.bin`, 64 * 1024])) }),
  peers: ['floodgate', 'fastify'],
  async run({ port, pids, root, uploads, warmup, quick, peer }) {
    const runs = warmup || quick ? 1 : 3
    const big = []
    const small = []
    for (let i = 0; i < runs; i++) {
      big.push(await form({ port, pids, uploads }, ['-F', `file=@${join(root, 'big.bin')}`]))
      const args = Array.from({ length: SMALL }, (_, n) => ['-F', `f${n}=@${join(root, `small-${n}.bin`)}`]).flat()
      small.push(await form({ port, pids, uploads }, args))
    }
    const median = (list, key) => list.map((r) => r[key]).sort((a, b) => a - b)[Math.floor(list.length / 2)]
    const bigRun = big.sort((a, b) => a.seconds - b.seconds)[Math.floor(big.length / 2)]
    const extra = {}
    if (peer === 'floodgate' && !warmup) {
      const data = readFileSync(join(root, 'big.bin'))
      // Rounds of all five, side by side; each ratio is the median of the rounds' own ratios,
      // which holds steadier than a ratio of medians while the page cache's writeback of the
      // previous round swings every rate (0.5–1.2 GB/s for the same PUT on this machine).
      const tus = []
      for (let i = 0; i < (runs > 1 ? 7 : 1); i++) {
        const round = await tusVersusPut({ port, uploads }, data)
        tus.push({ ...round, tusRatio: round.tus / round.put, tusJsRatio: round.tusJs / round.put, syncRatio: round.tusSync / round.putSync })
      }
      extra['raw PUT GB/s (Node client)'] = median(tus, 'put')
      extra['tus GB/s (8 MiB PATCHes)'] = median(tus, 'tus')
      extra['tus ÷ raw PUT'] = median(tus, 'tusRatio')
      extra['tus-js-client ÷ raw PUT'] = median(tus, 'tusJsRatio')
      extra['raw PUT GB/s fsync'] = median(tus, 'putSync')
      extra['tus ÷ raw PUT, fsync'] = median(tus, 'syncRatio')
    }
    return {
      ...extra,
      'GB/s': bigRun.bytes / bigRun.seconds / 1e9,
      'CPU s (256 MiB)': median(big, 'cpu'),
      'files/s (1000 × 64 KiB)': SMALL / median(small, 'seconds'),
      'CPU s (1000 files)': median(small, 'cpu'),
      'RSS growth MiB': Math.max(...big.map((r) => r.rss), ...small.map((r) => r.rss)),
    }
  },
  primary: 'GB/s',
}
