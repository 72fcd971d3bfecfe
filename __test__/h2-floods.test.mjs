// HTTP/2 floods, over h2c and over TLS (ALPN h2), each with a real misbehaving client (Python
// h2's framing, __test__/tools/h2_client.py): the connection gets GOAWAY ENHANCE_YOUR_CALM, is
// closed, and is counted by reason, the server's memory stays bounded, and a good client on
// another connection is served meanwhile.
import test from 'ava'
import { fixture, eventually, needs, pythonWith, runPythonTool, opensslTool, selfSignedCertificate, Server, StreamingApp, curlTool, curl } from './helpers.mjs'

const MiB = 1024 * 1024
const pythonH2 = pythonWith('h2', 'python3-h2')
const dir = fixture({ 'small.txt': 'hello\n', 'big.bin': Buffer.alloc(32 * MiB, 1) })
test.after.always(() => dir.cleanup())
const certificate = opensslTool.missing ? undefined : selfSignedCertificate(['localhost'])

async function start(t, transport, serverOptions = {}) {
  const server = new Server({
    ...(transport === 'tls' ? { tls: certificate } : { http2: true }),
    http2MaxControlFramesPerSecond: 100,
    ...serverOptions,
  })
  const app = new StreamingApp({ rateLimitRequests: 0, rateLimitBandwidth: 0, sendTimeout: 1000 })
  app.files('/files', { root: dir.root })
  app.post('/sink', async (req) => new Response(String((await req.arrayBuffer()).byteLength)))
  server.mount('/stream', app)
  const { port, url } = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  return { server, port, url }
}

const floods = [
  ['ping-flood', 'PING frames', 'h2_control_flood'],
  ['settings-flood', 'SETTINGS frames', 'h2_control_flood'],
  ['priority-flood', 'PRIORITY frames', 'h2_control_flood'],
  ['empty-data-flood', 'empty DATA frames', 'h2_flood'],
  ['rapid-reset', 'HEADERS + RST_STREAM (rapid reset)', 'h2_flood'],
  ['continuation', 'an endless CONTINUATION header block', 'h2_flood'],
]

for (const transport of ['h2c', 'tls']) {
  const base = transport === 'tls' ? needs(opensslTool, needs(pythonH2, test.serial)) : needs(pythonH2, test.serial)
  const env = transport === 'tls' ? { H2_TLS: '1' } : {}

  for (const [mode, what, reason] of floods) {
    base(`${transport}: a flood of ${what} gets GOAWAY ENHANCE_YOUR_CALM, closed and counted as ${reason}`, async (t) => {
      const { server, port } = await start(t, transport)
      const rssBefore = process.memoryUsage.rss()
      const args = mode === 'rapid-reset' ? [mode, port, '/stream/files/small.txt', 0, 10, 100] : mode === 'continuation' ? [mode, port, '/stream/files/small.txt', 1, 10] : [mode, port, '/stream/sink', 0, 10, 50]
      const result = await runPythonTool(pythonH2, 'h2_client.py', args, { env, timeout: 30_000 })
      t.log(JSON.stringify(result))
      if (mode === 'continuation') t.not(result.closed, null, 'closed')
      else t.is(result.goaway_code, 11, `GOAWAY ${result.goaway_code}, closed ${result.closed}`)
      t.true(result.elapsed < 10, `ended after ${result.elapsed} s`)
      t.true(await eventually(() => server.stats().rejections[reason] >= 1), JSON.stringify(server.stats().rejections))
      t.true(await eventually(() => server.stats().connectionsLive === 0))
      t.true(process.memoryUsage.rss() - rssBefore < 128 * MiB)
    })
  }

  base(`${transport}: a zero flow-control window held open is cut at sendTimeout (RST_STREAM), the connection lives`, async (t) => {
    const { server, port } = await start(t, transport)
    const result = await runPythonTool(pythonH2, 'h2_client.py', ['stall', port, '/stream/files/big.bin', 3, 15], { env, timeout: 30_000 })
    t.is(result.reset, 3, JSON.stringify(result))
    t.is(server.stats().rejections.send_timeout, 3)
  })

  base(`${transport}: legitimate HTTP/2 use passes: a few PINGs and SETTINGS, a body in small DATA frames`, async (t) => {
    const { server, port } = await start(t, transport)
    // 50 PINGs at once, then quiet: under the limit of 100 a second.
    const pings = await runPythonTool(pythonH2, 'h2_client.py', ['ping-flood', port, '/stream/sink', 50, 1.5, 50], { env, timeout: 30_000 })
    t.is(pings.goaway, null, JSON.stringify(pings))
    t.is(pings.closed, null, JSON.stringify(pings))
    const settings = await runPythonTool(pythonH2, 'h2_client.py', ['settings-flood', port, '/stream/sink', 20, 1.5, 20], { env, timeout: 30_000 })
    t.is(settings.goaway, null, JSON.stringify(settings))
    t.is(server.stats().rejections.h2_control_flood, 0)
    t.is(server.stats().rejections.h2_flood, 0)
  })
}

for (const transport of ['h2c', 'tls']) {
  const base = transport === 'tls' ? needs(opensslTool, needs(curlTool, test)) : needs(curlTool, test)
  base(`${transport}: a header list over maxHeaderSize gets 431 on its stream; other requests pass`, async (t) => {
    const { url } = await start(t, transport, { maxHeaderSize: '16kb' })
    const h2 = transport === 'tls' ? ['--http2', '-k'] : ['--http2-prior-knowledge']
    const status = async (headers) =>
      (await curl(['-s', '-o', '/dev/null', '-w', '%{http_code} %{http_version}', ...h2, ...headers, `${url}/stream/files/small.txt`])).stdout.toString()
    t.is(await status(['-H', `x-big: ${'a'.repeat(20_000)}`]), '431 2')
    t.is(await status(['-H', `x-fits: ${'a'.repeat(8_000)}`]), '200 2')
  })
}
