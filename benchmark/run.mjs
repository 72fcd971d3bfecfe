// `npm run bench [-- --quick] [-- --only=files-64MiB-x16,download-1GiB]`: every workload against
// floodgate and its peers in one run on this machine. Prints ratios (floodgate ÷ peer; peer ÷
// floodgate for a workload whose primary metric is `lowerIsBetter`, so above 1 is floodgate ahead
// either way) and writes benchmark/results/latest.json. Absolute figures vary by machine; compare ratios.
import { writeFileSync, mkdirSync } from 'node:fs'
import { cpus, totalmem, platform, release, arch } from 'node:os'
import { fileURLToPath } from 'node:url'
import { spawnSync } from 'node:child_process'
import { PEERS } from './lib/peers.mjs'
import { makeFixtures } from './lib/fixtures.mjs'
import { chart } from './lib/chart.mjs'
import files, { filesWorkload } from './workloads/files.mjs'
import { tlsEnv } from './lib/tls-cert.mjs'
import download, { downloadWorkload } from './workloads/download.mjs'
import tlsHandshakes from './workloads/tls-handshakes.mjs'
import h2SmallTls from './workloads/h2-small-tls.mjs'
import upload, { uploadDir } from './workloads/upload.mjs'
import multipartUpload from './workloads/multipart.mjs'
import json from './workloads/json.mjs'
import generator from './workloads/generator.mjs'
import sse from './workloads/sse.mjs'
import wsEcho, { wsEchoDeflate } from './workloads/ws-echo.mjs'
import wsFanout, { wsFanoutDeflate } from './workloads/ws-fanout.mjs'
import wsIdle, { wsIdleDeflate, wsIdleDeflateOwn } from './workloads/ws-idle.mjs'
import sseIdle from './workloads/sse-idle.mjs'
import fanoutLatency from './workloads/fanout-latency.mjs'
import clusterConnect from './workloads/cluster-connect.mjs'
import clusterFanout from './workloads/cluster-fanout.mjs'
import defences from './workloads/defences.mjs'

const WORKLOADS = [files, filesWorkload({ tls: true }), download, downloadWorkload({ tls: true }), tlsHandshakes, h2SmallTls, upload, multipartUpload, json, generator, sse, wsEcho, wsEchoDeflate, wsFanout, wsFanoutDeflate, wsIdle, wsIdleDeflate, wsIdleDeflateOwn, sseIdle, fanoutLatency, clusterConnect, clusterFanout, defences]
const args = process.argv.slice(2) // --full: fanout-latency's whole sweep of rates
const quick = args.includes('--quick')
const only = args.find((arg) => arg.startsWith('--only='))?.slice('--only='.length).split(',')
// --observe-ab[=rounds]: floodgate also with histograms and rejection events off
// (`floodgate-nometrics`, every workload) and with its access log to a file
// (`floodgate-accesslog`, beside `nginx-accesslog`, on ACCESS_LOG_WORKLOADS); the floodgate
// variants (and nginx with and without its log) run `rounds` times (default 3), alternating,
// and report the median of each figure.
const observeArg = args.find((arg) => arg.startsWith('--observe-ab'))
const observeRounds = observeArg ? Number(observeArg.split('=')[1] ?? 3) : 0
const ACCESS_LOG_WORKLOADS = ['json-small-c100', 'files-64MiB-x16']
const METRICS_AB_SKIP = ['fanout-latency', 'cluster-connect', 'cluster-fanout', 'defences']

/** The peers a workload runs against, in order: with --observe-ab, the floodgate variants in rounds. */
function peerRuns(workload) {
  if (!observeRounds || !workload.peers.includes('floodgate') || METRICS_AB_SKIP.includes(workload.name)) return workload.peers
  const logs = ACCESS_LOG_WORKLOADS.includes(workload.name)
  const variants = ['floodgate', 'floodgate-nometrics', ...(logs ? ['floodgate-accesslog'] : [])]
  const rounds = Array.from({ length: observeRounds }, (_, i) => (i % 2 ? [...variants].reverse() : variants)).flat()
  if (!(logs && workload.peers.includes('nginx'))) return [...rounds, ...workload.peers.filter((name) => name !== 'floodgate')]
  // nginx with and without its access log, in rounds of their own too.
  const nginx = Array.from({ length: observeRounds }, (_, i) => (i % 2 ? ['nginx-accesslog', 'nginx'] : ['nginx', 'nginx-accesslog'])).flat()
  return [...rounds, ...workload.peers.filter((name) => !['floodgate', 'nginx'].includes(name)), ...nginx]
}

/** The median of each numeric figure over runs (the first run's other fields). */
function median(runs) {
  if (runs.length === 1) return runs[0]
  const out = { ...runs[0], runs: runs.length }
  for (const key of Object.keys(runs[0])) {
    const values = runs.map((r) => r[key]).filter((v) => typeof v === 'number').sort((a, b) => a - b)
    const middle = values.length >> 1
    if (values.length) out[key] = values.length % 2 ? values[middle] : (values[middle - 1] + values[middle]) / 2
  }
  return out
}

const machine = {
  cores: cpus().length,
  cpu: cpus()[0]?.model,
  memoryGiB: Math.round(totalmem() / 1024 ** 3),
  os: `${platform()} ${release()} ${arch()}`,
  node: process.version,
}
const report = { date: new Date().toISOString(), command: `npm run bench -- ${args.join(' ')}`.trim(), machine, quick, workloads: [] }

for (const workload of WORKLOADS.filter((w) => !only || only.includes(w.name))) {
  const sizes = typeof workload.fixtures === 'function' ? workload.fixtures(quick) : workload.fixtures
  const fixture = makeFixtures(sizes)
  const uploads = uploadDir()
  const entry = { name: workload.name, primary: workload.primary, ...(workload.lowerIsBetter && { lowerIsBetter: true }), results: {} }
  const runs = {}
  for (const peer of peerRuns(workload).map((name) => PEERS.find((p) => p.name === name))) {
    const available = peer.available()
    if (available !== true) {
      entry.results[peer.name] = { skipped: available }
      console.error(`${workload.name}: ${peer.name} skipped (${available})`)
      continue
    }
    let server
    try {
      server = await peer.start({ ROOT: fixture.root, UPLOAD_DIR: uploads.dir, ...(workload.tls && tlsEnv()), ...(workload.http2 && { TLS_H2: '1' }) })
      // One short warm-up so page cache and JIT are hot for everyone alike.
      const as = peer.base ?? peer.name // the A/B variants run the workload as their base peer
      await workload.run({ port: server.port, pids: server.pids, root: fixture.root, uploads: uploads.dir, peer: as, quick: true, warmup: true }).catch(() => {})
      spawnSync('sync') // start every measured run with no dirty pages pending writeback
      const result = await workload.run({ port: server.port, pids: server.pids, root: fixture.root, uploads: uploads.dir, peer: as, quick })
      ;(runs[peer.name] ??= []).push(result)
      entry.results[peer.name] = median(runs[peer.name])
      console.error(`${workload.name}: ${peer.name} ${JSON.stringify(result)}`)
    } catch (err) {
      entry.results[peer.name] = { error: String(err.message ?? err) }
      console.error(`${workload.name}: ${peer.name} failed: ${entry.results[peer.name].error}`)
    } finally {
      await server?.stop()
    }
  }
  fixture.cleanup()
  uploads.cleanup()
  const subject = entry.results.floodgate?.[workload.primary]
  entry.ratios = Object.fromEntries(
    Object.entries(entry.results)
      .filter(([name, result]) => name !== 'floodgate' && subject && result[workload.primary])
      .map(([name, result]) => [name, workload.lowerIsBetter ? result[workload.primary] / subject : subject / result[workload.primary]]),
  )
  report.workloads.push(entry)
}

// What observing costs: each variant against its base in the same run (1.00: no cost; for a
// lower-is-better figure, inverted so that below 1 is always a cost).
const observeRows = []
for (const entry of report.workloads) {
  const figure = (name) => entry.results[name]?.[entry.primary]
  const ratio = (on, off) => (figure(on) && figure(off) ? (entry.lowerIsBetter ? figure(off) / figure(on) : figure(on) / figure(off)) : undefined)
  const row = {
    workload: entry.name,
    metric: entry.primary,
    'metrics on÷off': ratio('floodgate', 'floodgate-nometrics'),
    'floodgate access log on÷off': ratio('floodgate-accesslog', 'floodgate'),
    'nginx access log on÷off': ratio('nginx-accesslog', 'nginx'),
  }
  // Server CPU (lower is better) where the workload measures it: what observing cost in work.
  const cpuKey = Object.keys(entry.results.floodgate ?? {}).find((key) => key.startsWith('server CPU'))
  const cpu = (on, off) => {
    const [a, b] = [entry.results[on]?.[cpuKey], entry.results[off]?.[cpuKey]]
    return a && b ? a / b : undefined
  }
  if (cpuKey) {
    row[`metrics on÷off ${cpuKey}`] = cpu('floodgate', 'floodgate-nometrics')
    row[`access log on÷off ${cpuKey}`] = cpu('floodgate-accesslog', 'floodgate')
  }
  if (Object.values(row).some((v) => typeof v === 'number')) observeRows.push(row)
}
if (observeRows.length) report.observe = observeRows

const format = (value) =>
  typeof value === 'number' ? (Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(2)) : typeof value === 'string' ? value.replace(/\s+/g, ' ').slice(0, 80) : '—'
// Only the peers some workload ran (the A/B variants appear with --observe-ab).
const ran = PEERS.filter((p) => report.workloads.some((entry) => entry.results[p.name]))
const rows = [['workload', 'metric', ...ran.map((p) => p.name), ...ran.slice(1).map((p) => `floodgate÷${p.name}`)]]
for (const entry of report.workloads) {
  const metrics = [...new Set(Object.values(entry.results).flatMap((r) => Object.keys(r)))].filter((m) => !['error', 'skipped', 'errors', 'runs'].includes(m))
  for (const metric of metrics) {
    rows.push([
      entry.name,
      metric === entry.primary && entry.lowerIsBetter ? `${metric} (lower is better; ratio peer÷floodgate)` : metric,
      ...ran.map((p) => format(entry.results[p.name]?.[metric] ?? entry.results[p.name]?.skipped ?? entry.results[p.name]?.error)),
      ...ran.slice(1).map((p) => (metric === entry.primary ? format(entry.ratios[p.name]) : '')),
    ])
  }
}
const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => String(row[column]).length)))
const line = (row) => `| ${row.map((cell, column) => String(cell).padEnd(widths[column])).join(' | ')} |`
const table = [line(rows[0]), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.slice(1).map(line)].join('\n')
console.log(`\n${report.date} · ${machine.cores} cores · ${machine.os} · Node ${machine.node} · ${report.command}\n`)
console.log(table)
report.table = table
if (observeRows.length) {
  const heads = [...new Set(observeRows.flatMap((row) => Object.keys(row)))]
  const cells = observeRows.map((row) => heads.map((h) => (typeof row[h] === 'number' ? row[h].toFixed(3) : (row[h] ?? '—'))))
  const w = heads.map((h, i) => Math.max(h.length, ...cells.map((c) => String(c[i]).length)))
  const l = (row) => `| ${row.map((c, i) => String(c).padEnd(w[i])).join(' | ')} |`
  console.log(`\nObserving's cost (${observeRounds} rounds of each floodgate variant, medians; 1.000 = no cost):\n`)
  console.log([l(heads), `|${w.map((n) => '-'.repeat(n + 2)).join('|')}|`, ...cells.map(l)].join('\n'))
}
const results = fileURLToPath(new URL('./results/', import.meta.url))
mkdirSync(results, { recursive: true })
writeFileSync(`${results}/latest.json`, JSON.stringify(report, null, 2))
writeFileSync(`${results}/latest.svg`, chart(report))
