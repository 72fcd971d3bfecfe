// Attacks on long-lived streams, each against a server in its own process whose memory and open
// file descriptors are sampled before, during and after: WebSocket protocol violations, SSE
// stream hoarding, HTTP/2 rapid reset and CONTINUATION floods (the Python h2 client of
// __test__/tools/h2_client.py, frames written by hand).
import test from 'ava'
import net from 'node:net'
import { fixture, needs, pythonWith, runPythonTool, rawWebSocket, closedWithin, eventually } from './helpers.mjs'
import { MiB, attackServer, baseline, sampler, assertRecovered, legitimate, get, VIOLATIONS } from './attack-helpers.mjs'

const pythonH2 = pythonWith('h2', 'python3-h2')
const dir = fixture({ 'small.txt': 'hello\n' })
test.after.always(() => dir.cleanup())
const root = dir.root


test(`WebSocket protocol violations (${VIOLATIONS.length} kinds, raw frames): closed 1002/1007/1009, counted, nothing reaches JS`, async (t) => {
  const server = await attackServer(t, { root, streaming: { wsMaxMessageSize: '1mb' } })
  const base = await baseline(server)
  const watch = sampler(server, { t })
  const outcomes = await Promise.all(
    VIOLATIONS.map(async ([name, bytes, expected], i) => {
      const raw = await rawWebSocket(server.port, '/stream/echo', { localAddress: `127.0.0.${2 + i}` })
      if (raw.status !== 101) return { name, expected, got: `status ${raw.status}` }
      raw.socket.write(bytes())
      try {
        await closedWithin(raw, 10_000)
      } catch {
        raw.socket.destroy()
        return { name, expected, got: 'not closed within 10 s' }
      }
      const close = raw.frames.find((frame) => frame.opcode === 0x8)
      return { name, expected, got: close?.payload.length >= 2 ? close.payload.readUInt16BE(0) : 'closed without a close frame' }
    }),
  )
  const wrong = outcomes.filter(({ expected, got }) => got !== expected).map(({ name, expected, got }) => `${name}: expected ${expected}, got ${got}`)
  t.deepEqual(wrong, [], 'every violation closed with its code')
  const { stats, ws } = await server.stats()
  const count = (codes) => VIOLATIONS.filter(([, , code]) => codes.includes(code)).length
  t.is(stats.rejections.ws_protocol_error, count([1002, 1007]))
  t.is(stats.rejections.ws_message_too_large, count([1009]))
  t.is(ws.messages, 0, 'no malformed message reached the JS handler')
  t.true(await eventually(async () => (await server.stats()).stats.wsConnections === 0), 'no session left')
  await assertRecovered(t, server, base, watch)
})

/** Opens an event stream on a raw socket; resolves { socket, status } once the head came. */
function openStream(port, user, localAddress) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress })
    let text = ''
    socket.on('connect', () => socket.write(`GET /stream/events?u=${user} HTTP/1.1\r\nHost: x\r\n\r\n`))
    socket.on('data', (chunk) => {
      text += chunk.toString('latin1')
      const status = /^HTTP\/1\.1 (\d{3})/.exec(text)
      if (status) resolve({ socket, status: Number(status[1]), text: () => text })
    })
    socket.on('error', reject)
    socket.on('close', () => reject(new Error(`stream closed before its head: ${JSON.stringify(text)}`)))
  })
}

test('SSE hoarding: 40 streams for one user from 10 addresses → 429 over sseMaxConnectionsPerUser (4); slots freed on disconnect', async (t) => {
  const server = await attackServer(t, { root, streaming: { sseMaxConnectionsPerUser: 4 } })
  const base = await baseline(server)
  const watch = sampler(server, { t })
  const hoard = []
  for (let i = 0; i < 40; i++) hoard.push(await openStream(server.port, 'mallory', `127.0.0.${2 + (i % 10)}`))
  const statuses = hoard.map((s) => s.status)
  t.is(statuses.filter((s) => s === 200).length, 4, `statuses: ${statuses.join(' ')}`)
  t.is(statuses.filter((s) => s === 429).length, 36)
  t.is((await server.stats()).stats.rejections.sse_limit, 36)
  const alice = await openStream(server.port, 'alice', '127.0.0.2')
  t.is(alice.status, 200, 'another user is unaffected')
  await get(`${server.url}/publish`, { localAddress: '127.0.0.250' })
  t.truthy(await eventually(() => alice.text().includes('data: ')), 'and gets published events')
  for (const s of hoard) s.socket.destroy()
  // The four slots come back as soon as the server notices the disconnects.
  const again = await eventually(async () => {
    const attempt = await openStream(server.port, 'mallory', '127.0.0.20')
    if (attempt.status === 200) return attempt
    attempt.socket.destroy()
    return false
  }, { timeout: 5_000, interval: 100 })
  t.truthy(again, 'mallory can open a stream again once the hoard is gone')
  const more = [again]
  for (let i = 0; i < 4; i++) more.push(await openStream(server.port, 'mallory', '127.0.0.21'))
  t.deepEqual(more.map((s) => s.status), [200, 200, 200, 200, 429], 'exactly the four slots are free again')
  for (const s of [...more, alice]) s.socket.destroy()
  await assertRecovered(t, server, base, watch)
})

needs(pythonH2, test.serial)('HTTP/2 rapid reset (HEADERS + RST_STREAM in a tight loop): GOAWAY ENHANCE_YOUR_CALM or closed; the server stays responsive', async (t) => {
  const server = await attackServer(t, { root, server: { http2: true } })
  const base = await baseline(server)
  const watch = sampler(server, { t })
  const legit = legitimate(server, { path: '/api/legit', interval: 50, t })
  // 100 pairs per write, then one pair per write (so the server may accept a stream before its
  // reset arrives).
  const results = []
  for (const batch of [100, 1]) results.push(await runPythonTool(pythonH2, 'h2_client.py', ['rapid-reset', server.port, '/api/x', 0, 8, batch], { timeout: 30_000 }))
  const traffic = await legit.stop()
  for (const [i, result] of results.entries()) {
    const batch = [100, 1][i]
    t.log(`rapid reset, ${batch} per write: ${JSON.stringify(result)}`)
    const ended = result.goaway_code === 11 || result.closed !== null
    t.true(ended, `${batch} per write: the connection took ${result.sent} HEADERS + RST_STREAM pairs in ${result.elapsed} s and was neither sent GOAWAY ENHANCE_YOUR_CALM (got ${result.goaway_code}) nor closed`)
    t.true(result.goaway === null || result.goaway < 5, `${batch} per write: GOAWAY after ${result.goaway} s`)
  }
  t.log(`legitimate p99 ${traffic.p99?.toFixed(1)} ms over ${traffic.count}`)
  t.deepEqual(traffic.failures, [])
  t.true(traffic.p99 < 2000, `legitimate p99 ${traffic.p99} ms`)
  // A well-behaved HTTP/2 client is served after it.
  const after = await runPythonTool(pythonH2, 'h2_client.py', ['idle', server.port, '/stream/files/small.txt', 1, 0.5])
  t.is(after.ended, 1, `an HTTP/2 request after the attack: ${JSON.stringify(after)}`)
  await assertRecovered(t, server, base, watch, { rssBound: 128 * MiB })
})

for (const mode of ['continuation', 'continuation-empty']) {
  const what = mode === 'continuation' ? 'CONTINUATION frames of 16 KiB header fields' : 'empty CONTINUATION frames'
  needs(pythonH2, test.serial)(`HTTP/2 CONTINUATION flood (HEADERS without END_HEADERS, then endless ${what}): connection closed, memory bounded`, async (t) => {
    const server = await attackServer(t, { root, server: { http2: true } })
    const base = await baseline(server)
    const watch = sampler(server, { t })
    const legit = legitimate(server, { path: '/api/legit', interval: 50, t })
    const result = await runPythonTool(pythonH2, 'h2_client.py', [mode, server.port, '/api/x', 1, 8], { timeout: 30_000 })
    const traffic = await legit.stop()
    t.log(`${mode}: ${JSON.stringify(result)}; legitimate p99 ${traffic.p99?.toFixed(1)} ms over ${traffic.count}`)
    t.not(result.closed, null, `the connection was not closed: it took ${result.sent_frames} CONTINUATION frames (${(result.sent_bytes / MiB).toFixed(1)} MiB) in ${result.elapsed} s (GOAWAY ${result.goaway_code ?? 'none'})`)
    t.true(result.closed === null || result.closed < 5, `closed after ${result.closed} s`)
    t.deepEqual(traffic.failures, [])
    t.true(traffic.p99 < 2000, `legitimate p99 ${traffic.p99} ms`)
    await assertRecovered(t, server, base, watch, { rssBound: 64 * MiB })
  })
}
