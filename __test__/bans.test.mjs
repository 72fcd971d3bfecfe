// Adaptive defences at accept: offender bans (`ban`) and the connection rate per address
// (`maxConnectionRatePerIp`). A reconnect loop is refused at the cheapest point, then banned
// while its neighbour is served; bans expire, `unban` lifts them, spoofed forwarded addresses
// stay within the table's bound, users are banned by name.
import test from 'ava'
import net from 'node:net'
import tls from 'node:tls'
import { Server, StreamingApp, curl, curlTool, eventually, needs, opensslTool, redisTool, request, selfSignedCertificate, sleep, startRedis } from './helpers.mjs'

async function start(t, serverOptions = {}, appOptions = {}, routes = (app) => app.get('/hello', () => new Response('hi'))) {
  const server = new Server({ maxConnectionsPerIp: 0, ...serverOptions })
  const app = new StreamingApp({ rateLimitRequests: 0, ...appOptions })
  routes(app)
  server.mount('/api', app)
  const { port } = await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  return { server, port }
}

/**
 * One connection from `localAddress` that sends a request at once: resolves what came back
 * before the server closed it ('' when it was closed unanswered).
 */
function attempt(port, localAddress, { path = '/api/hello' } = {}) {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress })
    const chunks = []
    socket.on('connect', () => socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`))
    socket.on('data', (chunk) => chunks.push(chunk))
    socket.on('error', () => {})
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')))
  })
}

const served = (reply) => reply.startsWith('HTTP/1.1 200')

test('a reconnect loop is refused by the connection rate before a byte is read, then banned, while its neighbour is served', async (t) => {
  const { server, port } = await start(t, { maxConnectionRatePerIp: 1, connectionRateBurst: 5, ban: { after: 10, within: '10s', for: '1m' } })
  const replies = []
  for (let i = 0; i < 40; i++) replies.push(await attempt(port, '127.0.0.9'))
  // The burst of 5 passes (one more each second the loop takes); the rest are closed
  // unanswered: 10 over the rate (the strikes), then banned.
  const passed = replies.filter(served).length
  t.true(replies.slice(0, 5).every(served), replies.slice(0, 5).join('|').slice(0, 200))
  t.true(passed <= 8, `${passed} served`)
  t.is(replies.filter((reply) => reply === '').length, 40 - passed)
  const stats = server.stats()
  t.is(stats.rejections.connection_rate, 10)
  t.is(stats.rejections.banned, 30 - passed)
  t.deepEqual(server.bans().map((ban) => ban.client), ['127.0.0.9'])
  t.true(server.bans()[0].remainingMs > 55_000)
  t.deepEqual(stats.bans, { inForce: 1, offenders: 0 })
  // Refused connections were never read from.
  const received = server.stats().bytesReceived
  t.is(await attempt(port, '127.0.0.9'), '')
  t.is(server.stats().bytesReceived, received)
  // The neighbour is served.
  t.true(served(await attempt(port, '127.0.0.10')))
  t.true(server.metrics().includes('floodgate_bans 1'))
})

test('a ban expires on time, and unban lifts one at once', async (t) => {
  const { server, port } = await start(t, { maxConnectionsPerIp: 1, ban: { after: 3, within: '10s', for: '1500ms' } })
  const holder = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.11' })
  t.teardown(() => holder.destroy())
  await eventually(() => server.stats().connectionsLive === 1)
  // Over the per-IP cap: 429 three times, then banned (closed unanswered).
  for (let i = 0; i < 3; i++) t.regex(await attempt(port, '127.0.0.11'), /^HTTP\/1.1 429/)
  t.is(await attempt(port, '127.0.0.11'), '')
  holder.destroy()
  await eventually(() => server.stats().connectionsLive === 0)
  t.is(await attempt(port, '127.0.0.11'), '', 'still banned with its slot free')
  const bannedAt = Date.now()
  await eventually(async () => served(await attempt(port, '127.0.0.11')), { timeout: 5_000, interval: 100 })
  const lasted = Date.now() - bannedAt
  t.true(lasted > 800 && lasted < 3_000, `ban ended after ${lasted} ms`)
  t.deepEqual(server.bans(), [])

  const second = new Server({ maxConnectionRatePerIp: 1, connectionRateBurst: 1, ban: { after: 1, for: '1h' } })
  second.mount('/api', () => new Response('ok'))
  const { port: port2 } = await second.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => second.close({ drain: 0 }))
  await attempt(port2, '127.0.0.12')
  t.is(await attempt(port2, '127.0.0.12'), '')
  t.is(second.bans().length, 1)
  t.true(second.unban('127.0.0.12'))
  t.false(second.unban('127.0.0.12'))
  await sleep(1_100) // the connection rate's bucket refills
  t.true(served(await attempt(port2, '127.0.0.12')))
})

test('spoofed addresses through a trusted proxy get 403 once banned and stay within the table bound', async (t) => {
  const { server, port } = await start(t, { trustProxy: ['127.0.0.1'], ban: { after: 1, for: '1m', maxEntries: 1_000 } })
  const spoofed = 100_000
  // One keep-alive connection from the proxy carries every spoofed client: each asks for a
  // missing route (404, a strike that bans it at once with after: 1).
  const seen = await new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1' })
    let statuses = 0
    let tail = ''
    socket.on('data', (chunk) => {
      const text = tail + chunk.toString('latin1')
      statuses += text.split('HTTP/1.1 404').length - 1
      tail = text.slice(-11) // shorter than the status line: no match counted twice
      if (statuses >= spoofed) {
        socket.destroy()
        resolve(statuses)
      }
    })
    socket.on('error', reject)
    socket.on('connect', async () => {
      const batch = 2_000
      for (let start = 0; start < spoofed; start += batch) {
        let text = ''
        for (let n = start; n < start + batch; n++) text += `GET /nowhere HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}\r\n\r\n`
        if (!socket.write(text)) await new Promise((r) => socket.once('drain', r))
      }
    })
  })
  t.is(seen, spoofed)
  t.is(server.bans().length, 1_000)
  t.is(server.stats().bans.inForce, 1_000)
  t.true(server.stats().bans.offenders <= 1_000)
  // The most recent are banned: 403 for them through the proxy, the proxy itself is served.
  const last = `10.${((spoofed - 1) >> 16) & 255}.${((spoofed - 1) >> 8) & 255}.${(spoofed - 1) & 255}`
  t.is((await request(`http://127.0.0.1:${port}/api/hello`, { headers: { 'x-forwarded-for': last } })).status, 403)
  t.is((await request(`http://127.0.0.1:${port}/api/hello`, { headers: { 'x-forwarded-for': '10.0.0.0' } })).status, 200)
  t.is((await request(`http://127.0.0.1:${port}/api/hello`)).status, 200)
  t.true(server.stats().rejections.banned >= 1)
})

test('users are banned by name where identify knows them, from any address; exempt addresses never are', async (t) => {
  const { server, port } = await start(
    t,
    { ban: { after: 3, for: '1m', exempt: ['127.0.0.20/32'] } },
    { rateLimitRequests: 1, rateLimitWindow: '1m', identify: (req) => req.headers.get('x-user') ?? undefined },
  )
  const as = (user, localAddress = '127.0.0.1') => request(`http://127.0.0.1:${port}/api/hello`, { headers: user ? { 'x-user': user } : {}, localAddress })
  t.is((await as('mallory')).status, 200)
  for (let i = 0; i < 3; i++) t.is((await as('mallory')).status, 429)
  t.deepEqual(server.bans().map((ban) => ban.client), ['user:mallory'])
  t.is((await as('mallory', '127.0.0.21')).status, 403)
  t.is((await as('alice')).status, 200)
  // The exempt address collects refusals but is never banned.
  for (let i = 0; i < 6; i++) await as(undefined, '127.0.0.20')
  t.is((await as(undefined, '127.0.0.20')).status, 429)
  t.deepEqual(server.bans().map((ban) => ban.client), ['user:mallory'])
  t.true(server.unban('user:mallory'))
})

needs(opensslTool, test)(
  'a banned address gets no TLS handshake: the connection is closed before the ServerHello',
  async (t) => {
    const { cert, key } = selfSignedCertificate()
    const { server, port } = await start(t, { tls: { cert, key }, maxConnectionRatePerIp: 1, connectionRateBurst: 1, ban: { after: 1, for: '1m' } })
    const handshake = (localAddress) =>
      new Promise((resolve) => {
        const socket = tls.connect({ port, host: '127.0.0.1', localAddress, rejectUnauthorized: false, servername: 'localhost' })
        // A whole exchange, so the server's side of the handshake is complete too.
        socket.on('secureConnect', () => socket.write('GET /api/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'))
        socket.on('data', () => resolve('secure'))
        socket.on('error', (error) => resolve(error.code ?? error.message))
        socket.on('close', () => resolve('closed'))
      })
    t.is(await handshake('127.0.0.13'), 'secure')
    await sleep(100) // the handshake's counters settle
    const handshakes = () => Object.entries(server.stats().rejections).filter(([reason]) => reason.startsWith('tls_')).reduce((sum, [, n]) => sum + n, 0)
    const before = handshakes()
    t.not(await handshake('127.0.0.13'), 'secure') // over the rate: a strike, banned
    t.not(await handshake('127.0.0.13'), 'secure')
    t.is(server.stats().rejections.connection_rate, 1)
    t.is(server.stats().rejections.banned, 1)
    t.is(handshakes(), before, 'no handshake was started for the refused connections')
    t.is(await handshake('127.0.0.14'), 'secure')
  },
)

test('ban and connection-rate options are checked: TypeErrors naming the option', async (t) => {
  for (const [options, name] of [
    [{ ban: { after: 0 } }, 'ban.after'],
    [{ ban: { within: 0 } }, 'ban.within'],
    [{ ban: { for: 0 } }, 'ban.for'],
    [{ ban: { maxEntries: 0 } }, 'ban.maxEntries'],
    [{ ban: { exempt: ['not a cidr'] } }, 'ban.exempt'],
    [{ ban: { after: 5, forever: true } }, 'forever'],
    [{ maxConnectionRatePerIp: -1 }, 'maxConnectionRatePerIp'],
  ]) {
    const error = t.throws(() => new Server(options), { instanceOf: TypeError }, JSON.stringify(options))
    t.true(error.message.includes(name), error.message)
  }
  const server = new Server({ ban: {} })
  server.mount('/api', () => new Response('ok'))
  await server.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => server.close({ drain: 0 }))
  t.throws(() => server.unban('nobody'), { instanceOf: TypeError, message: /unban/ })
  t.false(server.unban('192.0.2.1'))
  t.deepEqual(server.bans(), [])
})

needs(redisTool, test)(
  'with a cluster a ban reaches every instance, one started later included, and so does unban',
  async (t) => {
    const redis = await startRedis(t)
    const instance = async () => {
      const server = new Server({ maxConnectionsPerIp: 0, maxConnectionRatePerIp: 1, connectionRateBurst: 1, ban: { after: 2, for: '1m' }, cluster: { redis: redis.url, prefix: 'bans' } })
      server.mount('/api', () => new Response('ok'))
      const { port } = await server.listen({ port: 0, host: '127.0.0.1' })
      t.teardown(() => server.close({ drain: 0 }))
      return { server, port }
    }
    const [a, b] = [await instance(), await instance()]
    await sleep(200) // both have subscribed
    t.true(served(await attempt(a.port, '127.0.0.15')))
    t.true(served(await attempt(b.port, '127.0.0.15')), 'strikes are per instance: B has seen nothing yet')
    t.is(await attempt(a.port, '127.0.0.15'), '')
    t.is(await attempt(a.port, '127.0.0.15'), '') // the second strike on A: banned
    t.deepEqual(a.server.bans().map((ban) => ban.client), ['127.0.0.15'])
    t.true(await eventually(() => b.server.bans().length === 1), 'B learns the ban')
    t.is(await attempt(b.port, '127.0.0.15'), '')
    t.is(b.server.stats().rejections.banned, 1)
    t.true(served(await attempt(b.port, '127.0.0.16')))
    const c = await instance()
    t.true(await eventually(() => c.server.bans().length === 1), 'an instance started later reads the bans in force')
    t.true(c.server.bans()[0].remainingMs > 50_000)
    t.true(b.server.unban('127.0.0.15'))
    t.true(await eventually(() => a.server.bans().length === 0 && c.server.bans().length === 0), 'unban reaches the others')
    t.is(await redis.command('EXISTS', 'bans:ban:127.0.0.15'), 0)
  },
)

test('refusals of any kind that name their client strike: two slowloris heads from one address ban it', async (t) => {
  const { server, port } = await start(t, { headerTimeout: 300, ban: { after: 2, for: '1m' } })
  for (let i = 0; i < 2; i++) {
    const reply = await new Promise((resolve) => {
      const socket = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.17' })
      const chunks = []
      socket.on('connect', () => socket.write('GET /api/hello HTTP/1.1\r\nHost: x\r\n')) // never finished
      socket.on('data', (chunk) => chunks.push(chunk))
      socket.on('error', () => {})
      socket.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')))
    })
    t.regex(reply, /^HTTP\/1.1 408/)
  }
  t.is(server.stats().rejections.header_timeout, 2)
  t.deepEqual(server.bans().map((ban) => ban.client), ['127.0.0.17'])
  t.is(await attempt(port, '127.0.0.17'), '')
  t.true(served(await attempt(port, '127.0.0.18')))
})

needs(curlTool, test)(
  'over HTTP/2 too: a banned address is dropped before its preface is read, a banned forwarded client gets 403 on its stream',
  async (t) => {
    const h2 = (port, path, args = []) =>
      curl(['-s', '--http2-prior-knowledge', '-o', '/dev/null', '-w', '%{http_code} %{http_version}', ...args, `http://127.0.0.1:${port}${path}`])
    const direct = await start(t, { http2: true, maxConnectionRatePerIp: 1, connectionRateBurst: 1, ban: { after: 1, for: '1m' } })
    t.is((await h2(direct.port, '/api/hello', ['--interface', '127.0.0.19'])).stdout.toString(), '200 2')
    t.not((await h2(direct.port, '/api/hello', ['--interface', '127.0.0.19'])).stdout.toString(), '200 2') // over the rate: banned
    t.not((await h2(direct.port, '/api/hello', ['--interface', '127.0.0.19'])).stdout.toString(), '200 2')
    t.is(direct.server.stats().rejections.banned, 1)
    // Through a trusted proxy (127.0.0.1): a missing route bans the forwarded client, whose
    // next request over HTTP/2 is refused with 403 while the proxy's own requests pass.
    const proxied = await start(t, { http2: true, trustProxy: ['127.0.0.1'], ban: { after: 1, for: '1m' } })
    t.is((await h2(proxied.port, '/nowhere', ['-H', 'x-forwarded-for: 198.51.100.9'])).stdout.toString(), '404 2')
    t.deepEqual(proxied.server.bans().map((ban) => ban.client), ['198.51.100.9'])
    t.is((await h2(proxied.port, '/api/hello', ['-H', 'x-forwarded-for: 198.51.100.9'])).stdout.toString(), '403 2')
    t.is((await h2(proxied.port, '/api/hello')).stdout.toString(), '200 2')
  },
)
