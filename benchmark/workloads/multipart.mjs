// multipart/form-data uploads (curl -F) into a folder: one 256 MiB file, and 1,000 × 64 KiB
// files in one request. For floodgate also tus: the 256 MiB file in 8 MiB PATCHes against one
// raw PUT of it, both sent by the same Node client. floodgate's /stream/form (no fsync) against Fastify + @fastify/multipart
// writing each file to disk and hashing it (floodgate hashes every file too). GB/s of the body,
// files/s, the server's CPU seconds and RSS growth.
import { createReadStream, readdirSync, rmSync, statSync } from 'node:fs'
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

/** One request whose body is bytes [start, end) of `file`; resolves { status, headers }. */
function send(port, method, path, headers, file, start, end) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, headers: { ...headers, 'content-length': String(end - start) }, agent }, (res) => {
      res.resume()
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers }))
    })
    req.on('error', reject)
    if (end > start) createReadStream(file, { start, end: end - 1, highWaterMark: 1024 * 1024 }).pipe(req)
    else req.end()
  })
}

/** GB/s of one raw PUT of `file` and of a tus upload of it in 8 MiB PATCHes. */
async function tusVersusPut({ port, uploads }, file) {
  const size = statSync(file).size
  spawnSync('sync')
  let started = performance.now()
  const put = await send(port, 'PUT', '/stream/up/raw.bin', {}, file, 0, size)
  if (put.status !== 201) throw new Error(`PUT answered ${put.status}`)
  const putSeconds = (performance.now() - started) / 1000
  spawnSync('sync')
  const tus = { 'tus-resumable': '1.0.0' }
  started = performance.now()
  const created = await send(port, 'POST', '/stream/tus', { ...tus, 'upload-length': String(size), 'upload-metadata': `filename ${Buffer.from('tus.bin').toString('base64')}` }, file, 0, 0)
  if (created.status !== 201) throw new Error(`tus POST answered ${created.status}`)
  const piece = 8 * MiB
  for (let offset = 0; offset < size; offset += piece) {
    const end = Math.min(size, offset + piece)
    const patched = await send(port, 'PATCH', created.headers.location, { ...tus, 'content-type': 'application/offset+octet-stream', 'upload-offset': String(offset) }, file, offset, end)
    if (patched.status !== 204) throw new Error(`tus PATCH answered ${patched.status}`)
  }
  const tusSeconds = (performance.now() - started) / 1000
  for (const name of readdirSync(uploads)) rmSync(join(uploads, name), { recursive: true, force: true })
  return { put: size / putSeconds / 1e9, tus: size / tusSeconds / 1e9 }
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
      const tus = []
      for (let i = 0; i < runs; i++) tus.push(await tusVersusPut({ port, uploads }, join(root, 'big.bin')))
      extra['raw PUT GB/s (Node client)'] = median(tus, 'put')
      extra['tus GB/s (8 MiB PATCHes)'] = median(tus, 'tus')
      extra['tus ÷ raw PUT'] = median(tus, 'tus') / median(tus, 'put')
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
