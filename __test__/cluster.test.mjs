// The `cluster` option: caps and request rates shared by several instances through a
// redis-server of the test's own (startRedis), each instance a process of its own
// (tools/cluster_server.cjs), real ws clients.
import test from 'ava'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import http from 'node:http'
import { EventSource } from 'eventsource'
import { Server, needs, redisTool, startRedis, readyPort, wsOpen, eventually, sleep } from './helpers.mjs'

const redisTest = needs(redisTool, test.serial)
const SCRIPT = fileURLToPath(new URL('./tools/cluster_server.cjs', import.meta.url))

/** Starts one instance with `config` (see tools/cluster_server.cjs); killed at teardown. */
async function instance(t, config) {
  const child = spawn(process.execPath, [SCRIPT, JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-10_000)))
  const kill = (signal = 'SIGKILL') => child.exitCode === null && child.signalCode === null && child.kill(signal)
  t.teardown(() => kill())
  const port = await readyPort(child, () => stderr)
  const url = `http://127.0.0.1:${port}`
  return {
    port,
    url,
    ws: (query) => `ws://127.0.0.1:${port}/s/ws?${query}`,
    kill,
    exited: () => new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', resolve))),
    stats: async () => JSON.parse((await get(`${url}/stats`)).body),
  }
}

/** A GET on a connection of its own: { status, headers, body (string), ms }. */
function get(url, { timeout = 10_000 } = {}) {
  const started = Date.now()
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, timeout }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk) => (body += chunk))
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body, ms: Date.now() - started }))
    })
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: no answer within ${timeout} ms`)))
    req.on('error', reject)
  })
}

/** Opens `url` as a WebSocket: the open state, or { status } when refused before the 101. */
async function attempt(t, url) {
  try {
    return { socket: await wsOpen(t, url) }
  } catch (error) {
    if (error.status) return { status: error.status, headers: error.headers }
    throw error
  }
}

const cluster = (redis, more = {}) => ({ redis: redis.url, prefix: `t${Math.random().toString(36).slice(2, 8)}`, ...more })

test('cluster options are checked when the server is made: TypeErrors naming the option', (t) => {
  const bad = [
    [{ redis: 'http://127.0.0.1:6379' }, /cluster\.redis/],
    [{}, /cluster\.redis/],
    [{ redis: 'redis://127.0.0.1:6379', onFailure: 'maybe' }, /cluster\.onFailure/],
    [{ redis: 'redis://127.0.0.1:6379', leaseTtl: '1s', timeout: '500ms' }, /cluster\.timeout/],
    [{ redis: 'redis://127.0.0.1:6379', instances: 0 }, /cluster\.instances/],
    [{ redis: 'redis://127.0.0.1:6379', leaseTtl: '10 parsecs' }, /cluster\.leaseTtl/],
    [{ redis: 'redis://127.0.0.1:6379', bogus: 1 }, /bogus/],
  ]
  for (const [options, message] of bad) {
    const error = t.throws(() => new Server({ cluster: options }), { instanceOf: TypeError, message }, JSON.stringify(options))
    t.is(error?.code, 'ERR_FLOODGATE_OPTION')
  }
  t.notThrows(() => new Server({ cluster: { redis: 'redis://127.0.0.1:6379', onFailure: 'closed', instances: 3, leaseTtl: '10s' } }))
})

test('listen: reusePort must be a boolean', async (t) => {
  const error = await t.throwsAsync(new Server().listen({ reusePort: 'yes' }), { instanceOf: TypeError, message: /reusePort/ })
  t.is(error.code, 'ERR_FLOODGATE_OPTION')
})

redisTest('3 instances, 50 simultaneous WebSockets of one user, cap 10: exactly 10 open, 40 get 429', async (t) => {
  const redis = await startRedis(t)
  const config = { cluster: cluster(redis), streaming: { wsMaxConnectionsPerUser: 10 } }
  const instances = await Promise.all([0, 1, 2].map(() => instance(t, config)))
  const attempts = await Promise.all(Array.from({ length: 50 }, (_, i) => attempt(t, instances[i % 3].ws('user=alice'))))
  const opened = attempts.filter((a) => a.socket)
  const refused = attempts.filter((a) => a.status)
  t.is(opened.length, 10)
  t.is(refused.length, 40)
  t.true(refused.every((a) => a.status === 429 && a.headers['retry-after'] === '5'))
  // Another user is not affected.
  const bob = await attempt(t, instances[1].ws('user=bob'))
  t.truthy(bob.socket)
  const stats = await Promise.all(instances.map((i) => i.stats()))
  t.is(stats.reduce((sum, s) => sum + s.cluster.leases, 0), 11)
  t.true(stats.every((s) => !s.cluster.degraded))
  t.is(stats.reduce((sum, s) => sum + s.rejections.ws_limit, 0), 40)
  // Closing gives the places back, cluster-wide: alice opens 10 again, on one instance.
  for (const { socket } of opened) socket.client.close()
  await Promise.all(opened.map(({ socket }) => socket.closing))
  const key = `${config.cluster.prefix}:ws:/s/ws:u:alice`
  t.truthy(await eventually(async () => (await redis.command('ZCARD', key)) === 0, { timeout: 5_000 }), 'leases released')
  const again = await Promise.all(Array.from({ length: 11 }, () => attempt(t, instances[0].ws('user=alice'))))
  t.is(again.filter((a) => a.socket).length, 10)
  t.deepEqual(again.filter((a) => a.status).map((a) => a.status), [429])
})

redisTest('event streams: the per-user cap holds across instances, 429 over it', async (t) => {
  const redis = await startRedis(t)
  const config = { cluster: cluster(redis), streaming: { sseMaxConnectionsPerUser: 3 } }
  const [a, b] = await Promise.all([instance(t, config), instance(t, config)])
  const open = (server) =>
    new Promise((resolve, reject) => {
      const req = http.get(`${server.url}/s/events?user=carol&topic=news`, { agent: false }, (res) => {
        resolve({ status: res.statusCode, headers: res.headers, close: () => req.destroy() })
        if (res.statusCode !== 200) res.resume()
      })
      req.on('error', () => {})
      req.on('timeout', () => reject(new Error('no answer')))
      t.teardown(() => req.destroy())
    })
  const streams = await Promise.all([a, b, a, b, a, b].map(open))
  t.deepEqual(streams.map((s) => s.status).sort(), [200, 200, 200, 429, 429, 429])
  t.true(streams.filter((s) => s.status === 429).every((s) => s.headers['retry-after'] === '5'))
  streams.filter((s) => s.status === 200).forEach((s) => s.close())
  t.truthy(await eventually(async () => (await open(b)).status === 200, { timeout: 5_000 }), 'a stream opens once the others closed')
})

redisTest('a killed instance loses its leases within leaseTtl; its users connect elsewhere', async (t) => {
  const redis = await startRedis(t)
  const config = { cluster: cluster(redis, { leaseTtl: '2s', timeout: '200ms' }), streaming: { wsMaxConnectionsPerUser: 4 } }
  const [a, b] = await Promise.all([instance(t, config), instance(t, config)])
  for (let i = 0; i < 4; i++) t.truthy((await attempt(t, a.ws('user=dave'))).socket)
  t.is((await attempt(t, b.ws('user=dave'))).status, 429)
  a.kill('SIGKILL')
  await a.exited()
  const killedAt = Date.now()
  t.is((await attempt(t, b.ws('user=dave'))).status, 429, 'the leases outlive the instance until their TTL')
  const opened = await eventually(async () => (await attempt(t, b.ws('user=dave'))).socket, { timeout: 6_000, interval: 200 })
  t.truthy(opened, 'accepted once the dead leases expired')
  const waited = Date.now() - killedAt
  t.true(waited <= 2_000 + 1_500, `${waited} ms after the kill`)
})

redisTest('an instance that closes gives its leases back at once, not at their TTL', async (t) => {
  const redis = await startRedis(t)
  const config = { cluster: cluster(redis, { leaseTtl: '60s' }), streaming: { wsMaxConnectionsPerUser: 3 } }
  const [a, b] = await Promise.all([instance(t, config), instance(t, config)])
  for (let i = 0; i < 3; i++) t.truthy((await attempt(t, a.ws('user=nia'))).socket)
  t.is((await attempt(t, b.ws('user=nia'))).status, 429)
  a.kill('SIGTERM') // server.close(), then exit
  await a.exited()
  t.is(await redis.command('ZCARD', `${config.cluster.prefix}:ws:/s/ws:u:nia`), 0)
  t.truthy((await attempt(t, b.ws('user=nia'))).socket)
})

redisTest('rateLimitRequests is one budget across instances, with Retry-After and RateLimit headers', async (t) => {
  const redis = await startRedis(t)
  const config = { cluster: cluster(redis), rate: { rateLimitRequests: 6, rateLimitWindow: '1m' } }
  const instances = await Promise.all([0, 1, 2].map(() => instance(t, config)))
  const answers = []
  for (let i = 0; i < 9; i++) answers.push(await get(`${instances[i % 3].url}/r/hit?user=erin`))
  t.deepEqual(
    answers.map((a) => a.status),
    [200, 200, 200, 200, 200, 200, 429, 429, 429],
  )
  t.deepEqual(
    answers.slice(0, 6).map((a) => a.headers.ratelimit),
    [5, 4, 3, 2, 1, 0].map((r) => `"default";r=${r};t=${10 * (6 - r)}`),
  )
  for (const refused of answers.slice(6)) {
    t.is(refused.headers['ratelimit-policy'], '"default";q=6;w=60')
    t.is(refused.headers['retry-after'], '10')
    t.is(refused.headers.ratelimit, '"default";r=0;t=10')
  }
  // Another user has a budget of their own.
  t.is((await get(`${instances[2].url}/r/hit?user=frank`)).status, 200)
})

/** Times `fn`: { value, ms }. */
async function timed(fn) {
  const started = Date.now()
  const value = await fn()
  return { value, ms: Date.now() - started }
}

redisTest('Redis stopped (SIGSTOP): each failure policy answers within the timeout, counted; SIGCONT: recovered, leases registered', async (t) => {
  const redis = await startRedis(t)
  const base = { ...cluster(redis, { timeout: '200ms', leaseTtl: '3s' }), instances: 2 }
  const limits = { streaming: { wsMaxConnectionsPerUser: 4 }, rate: { rateLimitRequests: 100 } }
  const [local, open, closed] = await Promise.all(
    ['local', 'open', 'closed'].map((onFailure) => instance(t, { cluster: { ...base, onFailure }, ...limits })),
  )
  // Healthy: one socket each, through Redis.
  for (const [server, user] of [[local, 'gina'], [open, 'hank'], [closed, 'ivan']]) t.truthy((await attempt(t, server.ws(`user=${user}`))).socket)
  redis.pause()
  const bound = 200 + 1_500 // the timeout, and room for a busy machine

  // local: this instance's share of the cap (ceil(4 / 2) = 2, counting the socket it holds).
  const first = await timed(() => attempt(t, local.ws('user=gina')))
  t.truthy(first.value.socket, 'admitted under the local share')
  t.true(first.ms < bound, `${first.ms} ms`)
  const second = await timed(() => attempt(t, local.ws('user=gina')))
  t.is(second.value.status, 429, 'over the local share')
  t.true(second.ms < bound, `${second.ms} ms: decided without waiting for Redis again`)
  const hit = await get(`${local.url}/r/hit?user=gina`)
  t.is(hit.status, 200)
  t.is(hit.headers['ratelimit-policy'], '"default";q=100;w=60')
  t.true(hit.ms < bound, `${hit.ms} ms`)

  // open: admitted; closed: 503 + Retry-After, for sockets and requests.
  t.truthy((await attempt(t, open.ws('user=hank'))).socket)
  t.is((await get(`${open.url}/r/hit?user=hank`)).status, 200)
  const refused = await timed(() => attempt(t, closed.ws('user=ivan')))
  t.is(refused.value.status, 503)
  t.truthy(refused.value.headers['retry-after'])
  t.true(refused.ms < bound, `${refused.ms} ms`)
  const unavailable = await get(`${closed.url}/r/hit?user=ivan`)
  t.is(unavailable.status, 503)
  t.truthy(unavailable.headers['retry-after'])

  for (const server of [local, open, closed]) {
    const { cluster: state } = await server.stats()
    t.true(state.degraded)
    t.true(state.fallbacks.timeout >= 1, JSON.stringify(state))
    t.true(state.fallbacks.timeout + state.fallbacks.degraded + state.fallbacks.error >= 2, JSON.stringify(state))
  }
  t.regex((await get(`${local.url}/stats`)).body, /"degraded":true/)

  redis.resume()
  for (const server of [local, open, closed]) {
    const recovered = await eventually(async () => {
      const { cluster: state } = await server.stats()
      return !state.degraded && state.recoveries >= 1
    }, { timeout: 5_000, interval: 100 })
    t.truthy(recovered, 'recovered without a restart')
  }
  // The socket admitted while Redis was stopped is now leased in Redis too.
  t.is(await redis.command('ZCARD', `${base.prefix}:ws:/s/ws:u:gina`), 2)
  t.is(await redis.command('ZCARD', `${base.prefix}:ws:/s/ws:u:hank`), 2)
  // And the cluster-wide cap applies again: 4 for gina.
  t.truthy((await attempt(t, local.ws('user=gina'))).socket)
  t.truthy((await attempt(t, local.ws('user=gina'))).socket)
  t.is((await attempt(t, local.ws('user=gina'))).status, 429)
  t.is((await get(`${closed.url}/r/hit?user=ivan`)).status, 200)
})

redisTest('while Redis is stopped: local rate limits apply the share (429 past it), event streams follow the policy (503 when closed)', async (t) => {
  const redis = await startRedis(t)
  const base = { ...cluster(redis, { timeout: '200ms', leaseTtl: '3s' }), instances: 2 }
  const limits = { rate: { rateLimitRequests: 4, rateLimitWindow: '1m' }, streaming: { sseMaxConnectionsPerUser: 4 } }
  const [local, closed] = await Promise.all(['local', 'closed'].map((onFailure) => instance(t, { cluster: { ...base, onFailure }, ...limits })))
  const stream = (server, user) =>
    new Promise((resolve, reject) => {
      const req = http.get(`${server.url}/s/events?user=${user}&topic=x`, { agent: false }, (res) => {
        resolve({ status: res.statusCode, headers: res.headers })
        req.destroy()
      })
      req.on('error', () => {})
      req.setTimeout(5_000, () => reject(new Error('no answer')))
    })
  t.is((await stream(closed, 'oli')).status, 200, 'healthy: the stream opens')
  redis.pause()
  // local: 4 per minute across 2 instances → 2 here, then 429 with the usual headers.
  const hits = []
  for (let i = 0; i < 3; i++) hits.push(await get(`${local.url}/r/hit?user=pat`))
  t.deepEqual(hits.map((h) => h.status), [200, 200, 429])
  t.truthy(hits[2].headers['retry-after'])
  t.is(hits[2].headers['ratelimit-policy'], '"default";q=4;w=60')
  t.true(hits.every((h) => h.ms < 1_700), hits.map((h) => h.ms).join(', '))
  t.is((await stream(local, 'quinn')).status, 200, 'local: a stream under the share opens')
  const refused = await stream(closed, 'oli')
  t.is(refused.status, 503, 'closed: no stream while the caps cannot be checked')
  t.truthy(refused.headers['retry-after'])
  redis.resume()
  t.truthy(await eventually(async () => !(await closed.stats()).cluster.degraded, { timeout: 5_000, interval: 100 }))
  t.is((await stream(closed, 'oli')).status, 200, 'recovered: streams open again')
})

redisTest('the per-address WebSocket cap holds across instances, whatever the users', async (t) => {
  const redis = await startRedis(t)
  const config = { cluster: cluster(redis), streaming: { wsMaxConnectionsPerUser: 10, wsMaxConnectionsPerIp: 3 } }
  const [a, b] = await Promise.all([instance(t, config), instance(t, config)])
  const attempts = await Promise.all(['u1', 'u2', 'u3', 'u4', 'u5'].map((user, i) => attempt(t, [a, b][i % 2].ws(`user=${user}`))))
  t.is(attempts.filter((x) => x.socket).length, 3)
  t.deepEqual(attempts.filter((x) => x.status).map((x) => x.status), [429, 429])
  t.is(await redis.command('ZCARD', `${config.cluster.prefix}:ws-ip:/s/ws:a:127.0.0.1`), 3)
  // From another address the same users connect.
  const other = await wsOpen(t, a.ws('user=u4'), { localAddress: '127.0.0.2' })
  t.truthy(other)
})

redisTest('redis-server restarted empty: the live leases are registered again', async (t) => {
  const redis = await startRedis(t)
  const config = { cluster: cluster(redis, { leaseTtl: '3s', timeout: '200ms' }), streaming: { wsMaxConnectionsPerUser: 3 } }
  const a = await instance(t, config)
  for (let i = 0; i < 3; i++) t.truthy((await attempt(t, a.ws('user=judy'))).socket)
  const key = `${config.cluster.prefix}:ws:/s/ws:u:judy`
  t.is(await redis.command('ZCARD', key), 3)
  await redis.kill()
  await redis.start()
  t.is(await redis.command('ZCARD', key), 0, 'the new Redis is empty')
  t.truthy(await eventually(async () => (await redis.command('ZCARD', key)) === 3, { timeout: 4_000, interval: 100 }), 're-registered')
  const b = await instance(t, config)
  t.is((await attempt(t, b.ws('user=judy'))).status, 429, 'another instance sees them')
})

/** Publishes on `server` (POST /publish): { reached } (subscribers on that instance). */
async function publish(server, topic, data, { id } = {}) {
  const query = new URLSearchParams({ topic, ...(id ? { id } : {}) })
  return (await fetch(`${server.url}/publish?${query}`, { method: 'POST', body: data })).json()
}

/** An EventSource on `server`'s /s/events for `topics`: { source, events: [{ data, id, type }], opened }. */
function eventStream(t, server, topics, { fetchImpl } = {}) {
  const query = ['user=reader', ...topics.map((topic) => `topic=${encodeURIComponent(topic)}`)].join('&')
  const source = new EventSource(`${server.url}/s/events?${query}`, fetchImpl ? { fetch: fetchImpl } : undefined)
  const state = { source, events: [] }
  const keep = (type) => (event) => state.events.push({ type, data: event.data, id: event.lastEventId })
  source.addEventListener('message', keep('message'))
  source.addEventListener('snapshot', keep('snapshot'))
  state.opened = new Promise((resolve, reject) => {
    source.addEventListener('open', resolve, { once: true })
    setTimeout(() => reject(new Error('the event stream did not open')), 10_000).unref()
  })
  t.teardown(() => source.close())
  return state
}

/** Waits until `server` is subscribed in Redis to `count` patterns. */
async function subscribedTo(server, count) {
  return eventually(async () => (await server.stats()).cluster.patterns === count, { timeout: 5_000, interval: 50 })
}

redisTest('publish on one instance reaches every matching WebSocket and event stream on every instance, once', async (t) => {
  const redis = await startRedis(t)
  const config = { cluster: cluster(redis) }
  const [a, b, c] = await Promise.all([0, 1, 2].map(() => instance(t, config)))
  // A socket on A (`news.>`), two on B (`news.*`, `news.>`: one message from Redis per pattern
  // for B, each socket must get it once), two event streams on C (`news.>`, `news.sport`).
  const socket = async (server, pattern) => {
    const state = await wsOpen(t, server.ws('user=kim'))
    state.client.send(`sub:${pattern}`)
    await eventually(() => state.texts.includes(`subscribed:${pattern}`))
    return state
  }
  const onA = await socket(a, 'news.>')
  const oneToken = await socket(b, 'news.*')
  const rest = await socket(b, 'news.>')
  const all = eventStream(t, c, ['news.>'])
  const sport = eventStream(t, c, ['news.sport'])
  await Promise.all([all.opened, sport.opened])
  t.truthy(await subscribedTo(a, 1))
  t.truthy(await subscribedTo(b, 2))
  t.truthy(await subscribedTo(c, 2))

  t.deepEqual(await publish(a, 'news.sport', 's1'), { reached: 1 })
  await publish(b, 'news.weather', 'w1')
  await publish(c, 'news.sport.live', 'l1')
  await publish(a, 'other.thing', 'o1')
  await publish(b, 'news', 'n1')
  const received = (state) => state.texts.filter((text) => !text.startsWith('subscribed:'))
  const data = (stream) => stream.events.filter((e) => e.type === 'message').map((e) => e.data)
  t.truthy(
    await eventually(
      () => [onA, rest].every((s) => received(s).length >= 3) && received(oneToken).length >= 2 && data(all).length >= 3 && data(sport).length >= 1,
      { timeout: 5_000 },
    ),
    'delivered',
  )
  await sleep(300) // a duplicate would arrive meanwhile
  const sorted = (list) => [...list].sort()
  t.deepEqual(sorted(received(onA)), ['l1', 's1', 'w1'])
  t.deepEqual(sorted(received(rest)), ['l1', 's1', 'w1'])
  t.deepEqual(sorted(received(oneToken)), ['s1', 'w1'], '`*` is one token, however Redis globs')
  t.deepEqual(sorted(data(all)), ['l1', 's1', 'w1'])
  t.deepEqual(data(sport), ['s1'])
  // Ids are unique across instances.
  t.is(new Set(all.events.filter((e) => e.type === 'message').map((e) => e.id)).size, 3)
})

redisTest('an event stream hears what another instance publishes from the moment it is open', async (t) => {
  const redis = await startRedis(t)
  const config = { cluster: cluster(redis) }
  const [a, b] = await Promise.all([instance(t, config), instance(t, config)])
  // Each stream on B takes a pattern nobody had: its 200 comes once B is subscribed in Redis.
  for (let i = 0; i < 5; i++) {
    const stream = eventStream(t, b, [`flash${i}.>`])
    await stream.opened
    await publish(a, `flash${i}.now`, `f${i}`)
    t.truthy(
      await eventually(() => stream.events.some((e) => e.data === `f${i}`), { timeout: 3_000 }),
      `stream ${i} got the event published right after it opened`,
    )
    stream.source.close()
  }
})

redisTest('an event stream moved from instance A to B resumes from Last-Event-ID without a gap', async (t) => {
  const redis = await startRedis(t)
  const config = { cluster: cluster(redis), sse: { retry: 100 } }
  const [a, b, c] = await Promise.all([0, 1, 2].map(() => instance(t, config)))
  let target = a
  let release
  const released = new Promise((resolve) => (release = resolve))
  const lastIds = []
  const fetchImpl = async (input, init) => {
    const url = new URL(input)
    lastIds.push(new Headers(init?.headers).get('last-event-id'))
    if (target !== a) await released
    return fetch(`${target.url}${url.pathname}${url.search}`, init)
  }
  const stream = eventStream(t, a, ['feed.>'], { fetchImpl })
  await stream.opened
  t.truthy(await subscribedTo(a, 1))
  for (const n of [1, 2, 3]) await publish(c, `feed.${n % 2 ? 'odd' : 'even'}`, `e${n}`)
  t.truthy(await eventually(() => stream.events.length === 4), 'the snapshot and three events')
  target = b
  a.kill('SIGKILL')
  for (const n of [4, 5, 6]) await publish(c, `feed.${n % 2 ? 'odd' : 'even'}`, `e${n}`)
  const history = async () => (await redis.command('XLEN', `${config.cluster.prefix}:hist:feed.odd`)) + (await redis.command('XLEN', `${config.cluster.prefix}:hist:feed.even`))
  t.truthy(await eventually(async () => (await history()) === 6), 'in the history')
  release()
  t.truthy(await eventually(() => stream.events.length >= 7, { timeout: 10_000 }), 'resumed')
  t.truthy(await subscribedTo(b, 1))
  await publish(c, 'feed.odd', 'e7')
  t.truthy(await eventually(() => stream.events.length >= 8), 'live after the resume')
  await sleep(200)
  t.deepEqual(
    stream.events.map((e) => (e.type === 'snapshot' ? 'snapshot' : e.data)),
    ['snapshot', 'e1', 'e2', 'e3', 'e4', 'e5', 'e6', 'e7'],
  )
  t.is(lastIds.at(-1), stream.events[3].id, 'B was asked to resume after e3')
})

redisTest('while Redis fails publish keeps reaching local subscribers and counts the rest lost; a restarted Redis gets the subscriptions again', async (t) => {
  const redis = await startRedis(t)
  const config = { cluster: cluster(redis, { timeout: '200ms', leaseTtl: '3s' }) }
  const [a, b] = await Promise.all([instance(t, config), instance(t, config)])
  const socket = async (server) => {
    const state = await wsOpen(t, server.ws('user=lee'))
    state.client.send('sub:alerts.>')
    await eventually(() => state.texts.includes('subscribed:alerts.>'))
    return state
  }
  const [onA, onB] = [await socket(a), await socket(b)]
  t.truthy(await subscribedTo(a, 1))
  t.truthy(await subscribedTo(b, 1))
  const received = (state) => state.texts.filter((text) => !text.startsWith('subscribed:'))

  redis.pause()
  t.deepEqual(await publish(a, 'alerts.x', 'p1'), { reached: 1 })
  t.truthy(await eventually(() => received(onA).includes('p1'), { timeout: 1_000 }), 'local fan-out goes on')
  t.truthy(await eventually(async () => (await a.stats()).cluster.eventsLost >= 1, { timeout: 3_000 }), 'counted as lost for the others')
  redis.resume()
  t.truthy(await eventually(async () => !(await a.stats()).cluster.degraded, { timeout: 5_000 }))

  await redis.kill()
  await redis.start()
  // Both instances subscribe their pattern again on the new Redis, without a restart.
  const subscribers = async () => (await redis.command('CLIENT', 'LIST')).split('\n').filter((line) => /psub=1 /.test(line)).length
  const numpat = await eventually(async () => (await subscribers()) === 2, { timeout: 5_000, interval: 100 })
  t.truthy(numpat, 'patterns subscribed again')
  let n = 0
  const arrived = await eventually(
    async () => {
      await publish(a, 'alerts.y', `r${++n}`)
      await sleep(100)
      return received(onB).some((text) => text.startsWith('r'))
    },
    { timeout: 8_000 },
  )
  t.truthy(arrived, 'events cross instances again')
  await sleep(300)
  const crossed = received(onB).filter((text) => text.startsWith('r'))
  t.is(new Set(crossed).size, crossed.length, 'none twice')
  t.is(received(onA).filter((text) => text.startsWith('r')).length, n, 'every one delivered locally')
})

redisTest('listen({ reusePort: true }): two processes on one port both accept, and share the cluster limits', async (t) => {
  const redis = await startRedis(t)
  const config = { cluster: cluster(redis, { instances: 2 }), streaming: { wsMaxConnectionsPerUser: 4 } }
  const a = await instance(t, { ...config, listen: { reusePort: true } })
  const b = await instance(t, { ...config, listen: { port: a.port, reusePort: true } })
  t.is(b.port, a.port)
  const pids = new Set()
  for (let i = 0; i < 40; i++) pids.add((await get(`${a.url}/pid`)).body)
  t.is(pids.size, 2, 'the kernel spread the connections over both processes')
  const attempts = await Promise.all(Array.from({ length: 6 }, () => attempt(t, a.ws('user=mo'))))
  t.is(attempts.filter((x) => x.socket).length, 4)
  t.deepEqual(attempts.filter((x) => x.status).map((x) => x.status), [429, 429])
})
