// Attacks by slow and many clients, each against a server in its own process whose memory and
// open file descriptors are sampled before, during and after: slowloris (Debian's
// slowhttptest, and raw sockets from 40 addresses), connection exhaustion over the per-IP cap,
// slow reading (slowhttptest -X). Serial: each one loads both cores of a small machine.
import test from 'ava'
import net from 'node:net'
import { join } from 'node:path'
import { fixture, needs, eventually } from './helpers.mjs'
import {
  MiB,
  attackServer,
  baseline,
  sampler,
  assertRecovered,
  legitimate,
  get,
  runTool,
  slowhttptestTool,
  slowhttptestCsv,
} from './attack-helpers.mjs'

const dir = fixture({ 'small.txt': 'hello\n', 'big.bin': Buffer.alloc(16 * MiB, 3) })
test.after.always(() => dir.cleanup())
const root = dir.root

needs(slowhttptestTool, test.serial)(
  'slowloris (slowhttptest -H, 300 connections from 127.0.0.1): all 408/closed within headerTimeout; legitimate requests answered meanwhile',
  async (t) => {
    const server = await attackServer(t, { server: { headerTimeout: '2s', maxConnectionsPerIp: 1000 }, root })
    const base = await baseline(server)
    const watch = sampler(server, { t })
    const legit = legitimate(server, { t })
    const out = join(root, 'slowloris')
    const started = Date.now()
    // 300 connections opened at 300/s, each sending a header line every second, for at most 10 s
    // (slowhttptest stops early once no connection is left).
    const run = await runTool(
      slowhttptestTool.path,
      ['-H', '-c', '300', '-r', '300', '-i', '1', '-x', '8', '-l', '10', '-p', '3', '-g', '-o', out, '-u', `${server.url}/stream/files/small.txt`],
      { timeout: 30_000 },
    )
    const elapsed = (Date.now() - started) / 1000
    const traffic = await legit.stop()
    const rows = slowhttptestCsv(`${out}.csv`)
    const stats = (await server.stats()).stats
    const peak = rows.reduce((best, row) => (row.connected > best.connected ? row : best), rows[0])
    // slowhttptest stops before its -l 10 s once no connection is left, and says so.
    const report = run.stdout.replace(new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*[A-Za-z]`, 'g'), '')
    const endedAt = Number(/Test ended on (\d+)\w* second/.exec(report)?.[1])
    const exitStatus = /Exit status:\s*(.+)/.exec(report)?.[1]?.trim()
    t.log(`slowhttptest ran ${elapsed.toFixed(1)} s (exit ${run.code}): peak ${peak.connected} connected at ${peak.seconds} s, ended at ${endedAt} s: ${exitStatus}; header_timeout ${stats.rejections.header_timeout}`)
    t.log(`legitimate: ${traffic.count} answered, p50 ${traffic.p50?.toFixed(1)} ms, p99 ${traffic.p99?.toFixed(1)} ms, max ${traffic.max?.toFixed(1)} ms`)
    t.true(peak.connected >= 250, `the attack held ${peak.connected} connections at once (of 300)`)
    t.is(exitStatus, 'No open connections left', `slowhttptest did not see every connection closed within its 10 s: ${exitStatus}, last row ${JSON.stringify(rows.at(-1))}`)
    // headerTimeout 2 s after the last connection opened (300 at 300/s: about 1 s), with 3 s of
    // margin for a loaded machine and slowhttptest's whole seconds.
    t.true(endedAt <= 6, `the last slowloris connection was closed at ${endedAt} s (headerTimeout 2 s)`)
    t.true(stats.rejections.header_timeout >= 290, `${stats.rejections.header_timeout} connections got 408 at headerTimeout (of 300)`)
    t.deepEqual(traffic.failures, [], 'every legitimate request was answered 200')
    t.true(traffic.count >= 20, `${traffic.count} legitimate requests answered during the attack`)
    t.true(traffic.p99 < 2000, `legitimate p99 ${traffic.p99.toFixed(0)} ms during the attack`)
    await assertRecovered(t, server, base, watch, { rssBound: 128 * MiB })
  },
)

/** A slowloris socket: a request line, then one header line every `drip` ms, never the end. */
function slowlorisSocket(port, localAddress, drip = 300) {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress })
    const state = { localAddress, text: '', openedAt: 0, closedAt: 0, socket }
    let timer
    socket.on('connect', () => {
      state.openedAt = Date.now()
      socket.write('GET /stream/files/small.txt HTTP/1.1\r\nHost: x\r\n')
      timer = setInterval(() => socket.write(`X-Drip-${Date.now() % 1000}: a\r\n`), drip)
      resolve(state)
    })
    socket.on('data', (chunk) => (state.text += chunk.toString('latin1')))
    socket.on('error', (error) => (state.error = error.code))
    state.closing = new Promise((done) =>
      socket.on('close', () => {
        clearInterval(timer)
        state.closedAt = Date.now()
        done(state)
      }),
    )
  })
}

test.serial('slowloris from 40 addresses (127.0.0.2–41, 5 sockets each): every socket gets 408 at headerTimeout', async (t) => {
  const server = await attackServer(t, { server: { headerTimeout: '2s' }, root })
  const base = await baseline(server)
  const watch = sampler(server, { t })
  const legit = legitimate(server, { t })
  const addresses = Array.from({ length: 40 }, (_, i) => `127.0.0.${i + 2}`)
  const sockets = await Promise.all(addresses.flatMap((address) => Array.from({ length: 5 }, () => slowlorisSocket(server.port, address))))
  let timer
  const all = await Promise.race([
    Promise.all(sockets.map((s) => s.closing)),
    new Promise((resolve) => (timer = setTimeout(resolve, 15_000))),
  ])
  clearTimeout(timer)
  const traffic = await legit.stop()
  t.truthy(all, `${sockets.filter((s) => !s.closedAt).length} of 200 slowloris sockets still open 15 s later (headerTimeout 2 s)`)
  const not408 = sockets.filter((s) => !s.text.startsWith('HTTP/1.1 408'))
  t.deepEqual(not408.map((s) => `${s.localAddress}: ${JSON.stringify(s.text.slice(0, 40))} ${s.error ?? ''}`), [], 'every socket answered 408')
  const held = sockets.map((s) => s.closedAt - s.openedAt)
  const longest = Math.max(...held)
  t.log(`held ${Math.min(...held)}–${longest} ms; legitimate p99 ${traffic.p99?.toFixed(1)} ms over ${traffic.count}`)
  t.true(Math.min(...held) >= 1900, `a socket closed after ${Math.min(...held)} ms, before headerTimeout`)
  t.true(longest < 6000, `a socket was held ${longest} ms (headerTimeout 2 s)`)
  const stats = (await server.stats()).stats
  t.is(stats.rejections.header_timeout, 200)
  t.deepEqual(traffic.failures, [])
  t.true(traffic.p99 < 2000, `legitimate p99 ${traffic.p99} ms`)
  await assertRecovered(t, server, base, watch, { rssBound: 128 * MiB })
})

test.serial('connection exhaustion over maxConnectionsPerIp (20): 40 of 60 sockets from one address get 429; other addresses are served', async (t) => {
  const server = await attackServer(t, { server: { maxConnectionsPerIp: 20, headerTimeout: '30s' }, root })
  const base = await baseline(server)
  const watch = sampler(server, { t })
  const sockets = []
  for (let i = 0; i < 60; i++) {
    const socket = net.connect({ port: server.port, host: '127.0.0.1', localAddress: '127.0.0.1' })
    const state = { socket, text: '', closed: false }
    socket.on('data', (chunk) => (state.text += chunk.toString('latin1')))
    socket.on('error', () => {})
    socket.on('close', () => (state.closed = true))
    sockets.push(state)
  }
  const refused = () => sockets.filter((s) => s.text.startsWith('HTTP/1.1 429'))
  await eventually(() => refused().length >= 40 && refused().every((s) => s.closed), { timeout: 10_000 })
  // Other clients, one connection each from ten addresses, while the 20 slots are held.
  const others = await Promise.all(
    Array.from({ length: 10 }, (_, i) => get(`${server.url}/stream/files/small.txt`, { localAddress: `127.0.0.${i + 2}` })),
  )
  const stats = (await server.stats()).stats
  t.is(refused().length, 40, `${refused().length} sockets got 429`)
  t.true(refused().every((s) => /\r\nRetry-After: 1\r\n/i.test(s.text) && s.closed), 'each 429 says Retry-After and the socket is closed')
  t.is(sockets.filter((s) => !s.closed).length, 20, 'the 20 under the cap are still open')
  t.is(stats.rejections.connection_limit, 40)
  t.deepEqual(others.map((r) => r.status), Array(10).fill(200), 'other addresses are unaffected')
  for (const s of sockets) s.socket.destroy()
  await assertRecovered(t, server, base, watch, { rssBound: 128 * MiB })
  // And the address has its slots back.
  t.is((await get(`${server.url}/stream/files/small.txt`, { localAddress: '127.0.0.1' })).status, 200)
})

needs(slowhttptestTool, test.serial)(
  'slow reading (slowhttptest -X, 60 connections, tiny windows): every download cut off at sendTimeout, counted; legitimate requests answered',
  async (t) => {
    const server = await attackServer(t, { server: { maxConnectionsPerIp: 1000 }, streaming: { sendTimeout: '2s', downloadTimeout: '60s' }, root })
    const base = await baseline(server)
    const watch = sampler(server, { t })
    const legit = legitimate(server, { t })
    const out = join(root, 'slowread')
    const started = Date.now()
    // When the server had cut off 55 of the 60 (its own count: slowhttptest, reading 32 bytes a
    // second, sees the close only once it has read what its socket buffer still holds).
    let cutAt
    const watchCuts = setInterval(async () => {
      const { stats } = await server.stats().catch(() => ({ stats: undefined }))
      if (stats && cutAt === undefined && stats.rejections.send_timeout >= 55) cutAt = Date.now() - started
    }, 250)
    t.teardown(() => clearInterval(watchCuts))
    // Windows of 512–1024 bytes, 32 bytes read a second, each connection asking twice for 16 MiB.
    const run = await runTool(
      slowhttptestTool.path,
      ['-X', '-c', '60', '-r', '60', '-w', '512', '-y', '1024', '-n', '1', '-z', '32', '-k', '2', '-l', '10', '-p', '3', '-g', '-o', out, '-u', `${server.url}/stream/files/big.bin`],
      { timeout: 40_000 },
    )
    clearInterval(watchCuts)
    const elapsed = (Date.now() - started) / 1000
    const traffic = await legit.stop()
    const rows = slowhttptestCsv(`${out}.csv`)
    const stats = (await server.stats()).stats
    const peak = Math.max(...rows.map((row) => row.connected))
    t.log(`slowhttptest -X ran ${elapsed.toFixed(1)} s (exit ${run.code}); peak ${peak} connected; send_timeout ${stats.rejections.send_timeout} (55 reached at ${cutAt} ms), download_timeout ${stats.rejections.download_timeout}, live ${stats.connectionsLive}`)
    t.log(`legitimate: ${traffic.count} answered, p99 ${traffic.p99?.toFixed(1)} ms`)
    t.true(peak >= 50, `the attack held ${peak} connections at once (of 60)`)
    t.true(stats.rejections.send_timeout >= 55, `${stats.rejections.send_timeout} slow readers cut off at sendTimeout (of 60)`)
    // sendTimeout 2 s once the socket buffers are full, with margin for a loaded machine.
    t.true(cutAt !== undefined && cutAt < 9000, `55 slow readers cut off ${cutAt} ms into the attack (sendTimeout 2 s)`)
    t.deepEqual(traffic.failures, [])
    t.true(traffic.p99 < 2000, `legitimate p99 ${traffic.p99} ms`)
    await assertRecovered(t, server, base, watch, { rssBound: 128 * MiB })
  },
)
