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
  for (const peer of workload.peers.map((name) => PEERS.find((p) => p.name === name))) {
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
      await workload.run({ port: server.port, pids: server.pids, root: fixture.root, uploads: uploads.dir, peer: peer.name, quick: true, warmup: true }).catch(() => {})
      spawnSync('sync') // start every measured run with no dirty pages pending writeback
      entry.results[peer.name] = await workload.run({ port: server.port, pids: server.pids, root: fixture.root, uploads: uploads.dir, peer: peer.name, quick })
      console.error(`${workload.name}: ${peer.name} ${JSON.stringify(entry.results[peer.name])}`)
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

const format = (value) =>
  typeof value === 'number' ? (Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(2)) : typeof value === 'string' ? value.replace(/\s+/g, ' ').slice(0, 80) : '—'
const rows = [['workload', 'metric', ...PEERS.map((p) => p.name), ...PEERS.slice(1).map((p) => `floodgate÷${p.name}`)]]
for (const entry of report.workloads) {
  const metrics = [...new Set(Object.values(entry.results).flatMap((r) => Object.keys(r)))].filter((m) => !['error', 'skipped', 'errors'].includes(m))
  for (const metric of metrics) {
    rows.push([
      entry.name,
      metric === entry.primary && entry.lowerIsBetter ? `${metric} (lower is better; ratio peer÷floodgate)` : metric,
      ...PEERS.map((p) => format(entry.results[p.name]?.[metric] ?? entry.results[p.name]?.skipped ?? entry.results[p.name]?.error)),
      ...PEERS.slice(1).map((p) => (metric === entry.primary ? format(entry.ratios[p.name]) : '')),
    ])
  }
}
const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => String(row[column]).length)))
const line = (row) => `| ${row.map((cell, column) => String(cell).padEnd(widths[column])).join(' | ')} |`
const table = [line(rows[0]), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.slice(1).map(line)].join('\n')
console.log(`\n${report.date} · ${machine.cores} cores · ${machine.os} · Node ${machine.node} · ${report.command}\n`)
console.log(table)
report.table = table
const results = fileURLToPath(new URL('./results/', import.meta.url))
mkdirSync(results, { recursive: true })
writeFileSync(`${results}/latest.json`, JSON.stringify(report, null, 2))
writeFileSync(`${results}/latest.svg`, chart(report))
