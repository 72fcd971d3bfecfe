// Server-Sent Events with real clients: raw sockets, the eventsource package, headless Chromium.
import test from 'ava'
import { EventSource } from 'eventsource'
import { Server, StreamingApp, connect, sleep, eventually, openInChromium, serverProcess, needs, chromiumTool } from './helpers.mjs'

async function start(t, sse, appOptions = {}) {
  const server = new Server()
  const app = new StreamingApp({ rateLimitRequests: 0, ...appOptions })
  app.sse('/events', sse)
  server.mount('/', app)
  const { url, port } = await server.listen({ port: 0 })
  t.teardown(() => server.close({ drain: 0 }))
  return { server, url, port, app }
}

/** Opens a raw stream; collects parsed events and raw text. */
async function rawStream(port, path, headers = '') {
  const socket = await connect(port)
  const state = { text: '', events: [], socket, closed: false }
  socket.on('data', (chunk) => {
    state.text += chunk.toString()
    const body = state.text.split('\r\n\r\n').slice(1).join('\r\n\r\n')
    state.events = parseEvents(body)
  })
  socket.on('close', () => (state.closed = true))
  socket.on('error', () => {})
  socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n${headers}\r\n`)
  return state
}

/** Parses SSE frames out of a chunked HTTP body (chunk-size lines are skipped). */
function parseEvents(body) {
  const events = []
  for (const block of body.replace(/\r\n[0-9a-f]+\r\n/g, '').split('\n\n')) {
    const event = { data: [] }
    let any = false
    for (const line of block.split('\n')) {
      const match = /^(id|event|data|retry): ?(.*)$/.exec(line)
      if (match) {
        any = true
        if (match[1] === 'data') event.data.push(match[2])
        else event[match[1]] = match[2]
      } else if (line.startsWith(':')) {
        events.push({ comment: true })
      }
    }
    if (any) events.push({ ...event, data: event.data.join('\n') })
  }
  return events
}

test('headers, snapshot first, multi-line data framed line by line, event names and ids', async (t) => {
  const { server, port } = await start(t, {
    topics: ['news.>'],
    snapshot: () => ({ state: 'initial' }),
  })
  const stream = await rawStream(port, '/events')
  await eventually(() => stream.events.length === 1)
  t.regex(stream.text, /^HTTP\/1\.1 200 OK\r\n/)
  t.regex(stream.text, /\r\ncontent-type: text\/event-stream\r\n/)
  t.regex(stream.text, /\r\ncache-control: no-cache\r\n/)
  t.regex(stream.text, /\r\nx-accel-buffering: no\r\n/)
  t.deepEqual(stream.events[0], { event: 'snapshot', id: '0', data: '{"state":"initial"}' })
  t.is(server.publish('news.sports', 'line one\nline two\r\nline three', { event: 'update' }), 1)
  t.is(server.publish('weather.today', 'not subscribed'), 0)
  server.publish('news.tech.ai', { json: true }, { id: 'custom-7' })
  await eventually(() => stream.events.length === 3)
  t.deepEqual(stream.events[1], { id: '1', event: 'update', data: 'line one\nline two\nline three' })
  t.deepEqual(stream.events[2], { id: 'custom-7', data: '{"json":true}' })
  t.regex(stream.text, /data: line one\ndata: line two\ndata: line three\n\n/)
  stream.socket.destroy()
})

test('wildcards: * is one token, > one or more at the end', async (t) => {
  const { server, port } = await start(t, { topics: ['a.*.c', 'x.>'] })
  const stream = await rawStream(port, '/events')
  await eventually(() => stream.text.includes('\r\n\r\n'))
  const reached = ['a.b.c', 'a.b.b.c', 'a.c', 'x', 'x.y', 'x.y.z'].map((topic) => [topic, server.publish(topic, topic)])
  t.deepEqual(reached, [['a.b.c', 1], ['a.b.b.c', 0], ['a.c', 0], ['x', 0], ['x.y', 1], ['x.y.z', 1]])
  await eventually(() => stream.events.length === 3)
  t.deepEqual(stream.events.map((e) => e.data), ['a.b.c', 'x.y', 'x.y.z'])
  t.throws(() => server.publish('a.*', 'x'), { instanceOf: TypeError, message: /invalid topic/ })
  stream.socket.destroy()
})

test('authenticate: 401 when it names nobody, 403 when it says so; topics per user', async (t) => {
  const { server, url, port } = await start(t, {
    authenticate: (req) => {
      const token = new URL(req.url).searchParams.get('token')
      if (token === 'banned') throw Object.assign(new Error('banned'), { status: 403 })
      return token ?? undefined
    },
    topics: (req, user) => [`user.${user}.>`],
  })
  t.is((await fetch(`${url}/events`)).status, 401)
  t.is((await fetch(`${url}/events?token=banned`)).status, 403)
  const ada = await rawStream(port, '/events?token=ada')
  await eventually(() => ada.text.includes('\r\n\r\n'))
  t.is(server.publish('user.bob.msg', 'for bob'), 0)
  t.is(server.publish('user.ada.msg', 'for ada'), 1)
  await eventually(() => ada.events.length === 1)
  ada.socket.destroy()
})

test('per-user cap: 429 + Retry-After over it; the slot is freed when a stream closes', async (t) => {
  const closes = []
  const { server, url, port } = await start(
    t,
    {
      authenticate: (req) => new URL(req.url).searchParams.get('u'),
      topics: ['t'],
      onClose: (user, reason) => closes.push([user, reason]),
    },
    { sseMaxConnectionsPerUser: 2 },
  )
  const first = await rawStream(port, '/events?u=ada')
  const second = await rawStream(port, '/events?u=ada')
  await eventually(() => first.text.includes('200 OK') && second.text.includes('200 OK'))
  const refused = await fetch(`${url}/events?u=ada`)
  t.is(refused.status, 429)
  t.truthy(refused.headers.get('retry-after'))
  t.is(server.stats().rejections.sse_limit, 1)
  const bob = await rawStream(port, '/events?u=bob')
  await eventually(() => bob.text.includes('200 OK'))
  first.socket.destroy()
  // The slot comes back as soon as the server notices the disconnect.
  const reopened = await eventually(async () => {
    const attempt = await rawStream(port, '/events?u=ada')
    await eventually(() => attempt.text.includes('\r\n'), { timeout: 1000 })
    if (attempt.text.includes('200 OK')) return attempt
    attempt.socket.destroy()
    return false
  }, { timeout: 5000 })
  t.truthy(reopened, 'a new stream is accepted once one closed')
  t.true(await eventually(() => closes.some(([user, reason]) => user === 'ada' && reason === 'client')))
  for (const s of [second, bob, reopened]) s.socket.destroy()
})

test('snapshot then live under concurrent publishes: nothing lost, nothing twice', async (t) => {
  let counter = 0
  const { server, port } = await start(t, { topics: ['count'], snapshot: () => String(counter) })
  const publisher = setInterval(() => {
    for (let i = 0; i < 5; i++) {
      counter++
      server.publish('count', String(counter))
    }
  }, 1)
  const streams = []
  for (let i = 0; i < 5; i++) {
    streams.push(await rawStream(port, '/events'))
    await sleep(20)
  }
  await sleep(200)
  clearInterval(publisher)
  const last = counter
  for (const stream of streams) {
    await eventually(() => stream.events.length > 0 && Number(stream.events.at(-1).data) === last)
    const [snapshot, ...live] = stream.events
    t.is(snapshot.event, 'snapshot')
    const values = live.map((e) => Number(e.data))
    const expected = Array.from({ length: last - Number(snapshot.data) }, (_, i) => Number(snapshot.data) + 1 + i)
    t.deepEqual(values, expected)
    stream.socket.destroy()
  }
})

test('keepalive comments on a quiet stream; a quiet stream is not closed', async (t) => {
  const { port } = await start(t, { topics: ['quiet'] }, { sseKeepAlive: 300 })
  const started = Date.now() // before the request: the keepalive clock may start before rawStream resolves
  const stream = await rawStream(port, '/events')
  await eventually(() => stream.events.some((e) => e.comment), { timeout: 3000 })
  const elapsed = Date.now() - started
  t.true(elapsed >= 250 && elapsed < 1500, `first keepalive after ${elapsed} ms`)
  // 1.8 s at a 300 ms interval is about 6 comments; 2 is a 3x margin and still shows they repeat.
  await sleep(1800)
  t.false(stream.closed)
  const comments = stream.events.filter((e) => e.comment).length
  t.true(comments >= 2, `${comments} keepalive comments in 1.8 s after the first`)
  stream.socket.destroy()
})

test('slow consumer: the queue stays bounded (dropOldest counted), or the stream closes', async (t) => {
  const closes = []
  // Memory is measured in a server process of its own, apart from this one's other tests.
  const { port, rss } = await serverProcess(
    t,
    `const { Server, StreamingApp } = floodgate
    const server = new Server()
    const app = new StreamingApp({ rateLimitRequests: 0 })
    app.sse('/events', { topics: ['firehose'], queueEvents: 16 })
    server.mount('/', app)
    const big = 'x'.repeat(64 * 1024)
    server.mount('/publish', () => {
      for (let i = 0; i < 2000; i++) server.publish('firehose', big)
      return Response.json({ dropped: server.stats().rejections.sse_event_dropped })
    })
    server.listen({ port: 0 }).then(({ port }) => console.log('READY ' + port))`,
  )
  const stream = await rawStream(port, '/events')
  await eventually(() => stream.text.includes('\r\n\r\n'))
  stream.socket.pause() // never reads again
  const rssBefore = rss()
  const { dropped } = await (await fetch(`http://127.0.0.1:${port}/publish`)).json()
  await sleep(200)
  t.true(dropped > 1000, `${dropped} events dropped`)
  const growth = (rss() - rssBefore) / 2 ** 20
  t.log(`server RSS growth: ${growth.toFixed(1)} MiB for 125 MiB published, ${dropped} events dropped`)
  t.true(growth < 64, `server memory grew ${growth.toFixed(1)} MiB for 125 MiB published`)
  stream.socket.destroy()

  const big = 'x'.repeat(64 * 1024)
  const closing = await start(t, { topics: ['firehose'], queueEvents: 4, overflow: 'close', onClose: (u, reason) => closes.push(reason) })
  const victim = await rawStream(closing.port, '/events')
  await eventually(() => victim.text.includes('\r\n\r\n'))
  victim.socket.pause()
  for (let i = 0; i < 500; i++) closing.server.publish('firehose', big)
  t.true(await eventually(() => closing.server.stats().rejections.sse_overflow === 1))
  t.true(await eventually(() => closes.includes('overflow')))
  victim.socket.destroy()
})

test('Last-Event-ID resumes from the ring; an unknown id falls back to the snapshot', async (t) => {
  const { server, port } = await start(t, { topics: ['feed'], snapshot: () => 'snap' })
  const first = await rawStream(port, '/events')
  await eventually(() => first.events.length === 1)
  for (const n of [1, 2, 3]) server.publish('feed', `n${n}`)
  await eventually(() => first.events.length === 4)
  const lastId = first.events.at(-1).id
  first.socket.destroy()
  server.publish('feed', 'n4')
  server.publish('feed', 'n5')
  const resumed = await rawStream(port, '/events', `Last-Event-ID: ${lastId}\r\n`)
  await eventually(() => resumed.events.length === 2)
  t.deepEqual(resumed.events.map((e) => e.data), ['n4', 'n5'], 'no snapshot, just what was missed')
  server.publish('feed', 'n6')
  await eventually(() => resumed.events.length === 3)
  t.is(resumed.events[2].data, 'n6')
  const unknown = await rawStream(port, '/events', 'Last-Event-ID: nope\r\n')
  await eventually(() => unknown.events.length === 1)
  t.is(unknown.events[0].event, 'snapshot')
  resumed.socket.destroy()
  unknown.socket.destroy()
})

test('the eventsource package receives messages and named events', async (t) => {
  const { server, url } = await start(t, { topics: ['chat.>'], retry: 100 })
  const source = new EventSource(`${url}/events`)
  t.teardown(() => source.close())
  const received = []
  source.addEventListener('message', (e) => received.push(e.data))
  source.addEventListener('note', (e) => received.push(`note:${e.data}`))
  await new Promise((resolve) => source.addEventListener('open', resolve, { once: true }))
  server.publish('chat.room1', 'hello')
  server.publish('chat.room2', 'a\nb', { event: 'note' })
  await eventually(() => received.length === 2)
  t.deepEqual(received, ['hello', 'note:a\nb'])
  t.is(server.stats().connectionsLive >= 1, true)
})

test('server close ends every stream cleanly, onClose says shutdown', async (t) => {
  const closes = []
  const server = new Server()
  const app = new StreamingApp({ rateLimitRequests: 0 })
  app.sse('/events', { topics: ['t'], onClose: (user, reason) => closes.push(reason) })
  server.mount('/', app)
  const { port } = await server.listen({ port: 0 })
  const streams = await Promise.all([1, 2, 3].map(() => rawStream(port, '/events')))
  await eventually(() => streams.every((s) => s.text.includes('\r\n\r\n')))
  const started = Date.now()
  await server.close({ drain: 5000 })
  t.true(Date.now() - started < 2000, 'streams end at once instead of waiting for the drain deadline')
  t.true(await eventually(() => streams.every((s) => s.closed)))
  t.true(streams.every((s) => s.text.endsWith('0\r\n\r\n')), 'each stream ended with the last chunk')
  t.true(await eventually(() => closes.length === 3))
  t.deepEqual(closes, ['shutdown', 'shutdown', 'shutdown'])
})

needs(chromiumTool, test)("a browser's EventSource (headless Chromium) gets the snapshot and live events", async (t) => {
  let snapshotTaken = false
  const app = new StreamingApp({ rateLimitRequests: 0 })
  app.sse('/events', {
    authenticate: (req) => new URL(req.url).searchParams.get('token') ?? undefined,
    topics: (req, user) => [`user.${user}.>`],
    snapshot: (req, user) => {
      snapshotTaken = true
      return { welcome: user }
    },
  })
  const { server, reported, running } = await openInChromium(
    t,
    app,
    `const seen = []
    const source = new EventSource('/events?token=ada')
    source.addEventListener('snapshot', (e) => seen.push('snapshot:' + e.data))
    source.onmessage = (e) => {
      seen.push(e.data)
      if (seen.length === 3) fetch('/report', { method: 'POST', body: JSON.stringify(seen) })
    }`,
  )
  // Published once the snapshot is taken: an event published between the subscription and the
  // snapshot counts as covered by it, and this snapshot does not reflect it.
  await eventually(() => running() && snapshotTaken && server.publish('user.ada.ping', 'ping 1') > 0, { timeout: 20_000 })
  server.publish('user.ada.ping', 'ping 2')
  t.truthy(await eventually(reported, { timeout: 10_000 }), 'the page reported what it saw')
  t.deepEqual(reported(), ['snapshot:{"welcome":"ada"}', 'ping 1', 'ping 2'])
})

test('published data cannot inject fields (a lone CR is a line end); unsafe ids and event names are refused', async (t) => {
  const { server, port } = await start(t, { topics: ['t'] })
  const stream = await rawStream(port, '/events')
  await eventually(() => stream.text.includes('\r\n\r\n'))
  server.publish('t', 'x\rid: 666\revent: forged', { id: '7' })
  await eventually(() => stream.events.length === 1)
  // Each piece between line ends (a lone CR is one, for a client) is a data line of its own.
  t.true(stream.text.includes('id: 7\ndata: x\ndata: id: 666\ndata: event: forged\n\n'), JSON.stringify(stream.text))
  t.deepEqual(stream.events[0], { id: '7', data: 'x\nid: 666\nevent: forged' })
  for (const fields of [{ id: '1\ndata: x' }, { event: 'a\rb' }, { id: 'a\0b' }]) {
    t.throws(() => server.publish('t', 'y', fields), { instanceOf: TypeError, code: 'ERR_FLOODGATE_OPTION' })
  }
  stream.socket.destroy()
})
