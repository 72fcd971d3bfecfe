// WebSocket with real clients: the ws package, a hand-made handshake on a raw socket, headless
// Chromium. Limits and protections are in ws-limits.test.mjs.
import test from 'ava'
import {
  StreamingApp,
  startWs,
  wsOpen,
  wsRefused,
  wsAccept,
  wsFrame,
  rawWebSocket,
  openInChromium,
  needs,
  chromiumTool,
  connect,
  closedWithin,
  sleep,
  eventually,
} from './helpers.mjs'

test('echo: text arrives as a string, binary as a Buffer; ws.send keeps the type', async (t) => {
  const received = []
  const { base } = await startWs(t, {
    '/echo': {
      message(ws, data, isBinary) {
        received.push({ type: typeof data, buffer: Buffer.isBuffer(data), isBinary })
        ws.send(data)
      },
    },
  })
  const c = await wsOpen(t, `${base}/echo`)
  c.client.send('hello, wörld ✓')
  c.client.send(Buffer.from([0, 1, 2, 255]))
  c.client.send('')
  const big = Buffer.alloc(200 * 1024, 7)
  c.client.send(big)
  t.true(await eventually(() => c.messages.length === 4))
  t.deepEqual(received, [
    { type: 'string', buffer: false, isBinary: false },
    { type: 'object', buffer: true, isBinary: true },
    { type: 'string', buffer: false, isBinary: false },
    { type: 'object', buffer: true, isBinary: true },
  ])
  t.deepEqual(c.messages[0], { data: 'hello, wörld ✓', isBinary: false })
  t.deepEqual(c.messages[1], { data: Buffer.from([0, 1, 2, 255]), isBinary: true })
  t.deepEqual(c.messages[2], { data: '', isBinary: false })
  t.true(c.messages[3].isBinary)
  t.true(c.messages[3].data.equals(big), 'a 200 KiB binary message comes back intact')
})

test('a route with no handler takes sockets and counts their messages without calling JS', async (t) => {
  const { server, base } = await startWs(t, { '/sink': {} }, { wsMaxMessagesPerSecond: 0 })
  const c = await wsOpen(t, `${base}/sink`)
  for (let i = 0; i < 50; i++) c.client.send(`reading ${i}`)
  t.true(await eventually(() => server.stats().wsMessagesIn === 50))
  t.is(server.stats().wsConnections, 1)
  c.client.close(1000, 'done')
  t.deepEqual((await closedWithin(c)).code, 1000, 'the close handshake still completes')
  t.true(await eventually(() => server.stats().wsConnections === 0), 'the slot is freed')
})

test('ws.send: Uint8Array and ArrayBuffer go out binary, strings text; false once closed', async (t) => {
  let sentAfterClose
  const { base } = await startWs(t, {
    '/send': {
      open(ws) {
        ws.send('text')
        ws.send(new Uint8Array([9, 8, 7]))
        ws.send(new Uint8Array([6, 5]).buffer)
        ws.send(Buffer.from('buf'))
      },
      close(ws) {
        sentAfterClose = ws.send('too late')
      },
    },
  })
  const c = await wsOpen(t, `${base}/send`)
  t.true(await eventually(() => c.messages.length === 4))
  t.deepEqual(c.messages, [
    { data: 'text', isBinary: false },
    { data: Buffer.from([9, 8, 7]), isBinary: true },
    { data: Buffer.from([6, 5]), isBinary: true },
    { data: Buffer.from('buf'), isBinary: true },
  ])
  c.client.close(1000)
  t.true(await eventually(() => sentAfterClose !== undefined))
  t.is(sentAfterClose, false)
})

test('open, message, close in order; close exactly once with the code the client sent', async (t) => {
  const events = []
  const same = []
  let first
  const { server, base } = await startWs(t, {
    '/life': {
      open(ws) {
        events.push(['open', ws.url])
        first ??= ws
        ws.tag = ws.url
      },
      message(ws, data) {
        events.push(['message', ws.url, data])
        same.push(ws.tag === ws.url)
      },
      close(ws, code, reason) {
        events.push(['close', ws.url, code, reason])
      },
    },
  })
  const a = await wsOpen(t, `${base}/life?n=a`)
  a.client.send('one')
  a.client.send('two')
  await eventually(() => events.length === 3)
  t.is(server.stats().wsConnections, 1)
  a.client.close(4001, 'bye now')
  t.deepEqual(await closedWithin(a), { code: 4001, reason: 'bye now', at: a.closed.at }, 'the server echoes the close')

  const b = await wsOpen(t, `${base}/life?n=b`)
  b.client.close() // no code: the handler sees 1005
  await closedWithin(b)
  t.true(await eventually(() => events.filter((e) => e[0] === 'close').length === 2))
  await sleep(300) // nothing more arrives: each close is reported once
  const of = (n) => events.filter((e) => e[1].endsWith(`n=${n}`)).map(([kind, , ...rest]) => [kind, ...rest])
  t.deepEqual(of('a'), [['open'], ['message', 'one'], ['message', 'two'], ['close', 4001, 'bye now']])
  t.deepEqual(of('b'), [['open'], ['close', 1005, '']])
  t.true(same.every(Boolean), 'message gets the same ws object open got')
  t.regex(first.url, /\?n=a$/)
  t.true(await eventually(() => server.stats().wsConnections === 0))
})

test('TCP dropped without a close frame (FIN or RST): close(ws, 1006) at once, the session is gone', async (t) => {
  const closes = []
  const { server, port, base } = await startWs(t, {
    '/drop': {
      message: (ws, data) => ws.send(data),
      close: (ws, code, reason) => closes.push({ url: ws.url, code, reason, at: Date.now() }),
    },
  })
  const c = await wsOpen(t, `${base}/drop?how=terminate`)
  c.client.send('three')
  t.true(await eventually(() => c.texts.length === 1))
  const fin = await rawWebSocket(port, '/ws/drop?how=fin')
  const rst = await rawWebSocket(port, '/ws/drop?how=rst')
  t.true(await eventually(() => server.stats().wsConnections === 3))
  const dropped = Date.now()
  c.client.terminate() // the ws client ends the TCP connection with no close frame
  fin.socket.end()
  rst.socket.resetAndDestroy()
  t.true(await eventually(() => closes.length === 3, { timeout: 8000 }), `${closes.length} of 3 closes reported`)
  const byHow = Object.fromEntries(closes.map((c) => [new URL(c.url, 'http://x').searchParams.get('how'), c]))
  const hows = ['terminate', 'fin', 'rst']
  const seen = hows.map((how) => ({ how, code: byHow[how]?.code, reason: byHow[how]?.reason, ms: byHow[how] && byHow[how].at - dropped }))
  t.deepEqual(
    seen.map(({ how, code, ms }) => [how, code, ms < 2000]),
    hows.map((how) => [how, 1006, true]),
    `each drop reported at once with 1006: ${JSON.stringify(seen)}`,
  )
  t.is(server.stats().wsConnections, 0)
})

test('telemetry: batch gets every message as { ws, data, isBinary }, in order; message is not called', async (t) => {
  const batches = []
  let messageCalls = 0
  const { base } = await startWs(
    t,
    {
      '/telemetry': {
        telemetry: true,
        batch: (messages) => batches.push(messages.map(({ ws, data, isBinary }) => [ws.url, isBinary ? [...data] : data, isBinary])),
        message: () => messageCalls++,
      },
    },
    { wsMaxMessagesPerSecond: 0 },
  )
  const [a, b] = await Promise.all([wsOpen(t, `${base}/telemetry?c=a`), wsOpen(t, `${base}/telemetry?c=b`)])
  for (let i = 0; i < 250; i++) {
    a.client.send(`a${i}`)
    b.client.send(Buffer.from([i]))
  }
  const total = () => batches.reduce((sum, batch) => sum + batch.length, 0)
  t.true(await eventually(() => total() === 500), `${total()} of 500 delivered`)
  await sleep(100)
  t.is(total(), 500)
  t.is(messageCalls, 0)
  const all = batches.flat()
  const fromA = all.filter(([url]) => url.endsWith('c=a'))
  const fromB = all.filter(([url]) => url.endsWith('c=b'))
  t.deepEqual(fromA.map(([, data, isBinary]) => [data, isBinary]), Array.from({ length: 250 }, (_, i) => [`a${i}`, false]))
  t.deepEqual(fromB.map(([, data, isBinary]) => [data, isBinary]), Array.from({ length: 250 }, (_, i) => [[i], true]))
  t.true(batches.length < 500, `500 messages in ${batches.length} batch calls`)
  a.client.close()
  b.client.close()
})

test('the ws object: user, remoteAddress, url, bufferedAmount; close and subscribe check their arguments', async (t) => {
  let seen
  const { base } = await startWs(t, {
    '/who': {
      authenticate: (req) => new URL(req.url).searchParams.get('token'),
      open(ws) {
        const attempt = (fn) => {
          try {
            fn()
            return 'ok'
          } catch (error) {
            return error instanceof TypeError ? 'TypeError' : String(error)
          }
        }
        seen = {
          user: ws.user,
          remoteAddress: ws.remoteAddress,
          url: ws.url,
          bufferedAmount: typeof ws.bufferedAmount,
          close999: attempt(() => ws.close(999)),
          close1001: attempt(() => ws.close(1001)),
          close2999: attempt(() => ws.close(2999)),
          close5000: attempt(() => ws.close(5000)),
          badTopic: attempt(() => ws.subscribe('a.>.b')),
          emptyTopic: attempt(() => ws.subscribe('')),
          goodTopic: attempt(() => ws.subscribe('a.*.c')),
          unsubscribe: attempt(() => ws.unsubscribe('a.*.c')),
        }
        ws.close(4321, 'checked')
      },
    },
  })
  const c = await wsOpen(t, `${base}/who/sub/path?token=ada&x=1`, { localAddress: '127.0.0.2' })
  t.deepEqual(await closedWithin(c), { code: 4321, reason: 'checked', at: c.closed.at })
  t.is(seen.user, 'ada')
  t.is(seen.remoteAddress, '127.0.0.2')
  t.regex(seen.url, /\/sub\/path\?token=ada&x=1$/)
  t.false(seen.url.startsWith('/ws/'), 'the mount prefix is stripped')
  t.is(seen.bufferedAmount, 'number')
  t.deepEqual(
    [seen.close999, seen.close1001, seen.close2999, seen.close5000, seen.badTopic, seen.emptyTopic],
    ['TypeError', 'TypeError', 'TypeError', 'TypeError', 'TypeError', 'TypeError'],
  )
  t.is(seen.goodTopic, 'ok')
  t.is(seen.unsubscribe, 'ok')
})

test('authenticate: 401 when it names nobody, 403 when it says so, before any 101', async (t) => {
  const opened = []
  const { server, base } = await startWs(t, {
    '/auth': {
      authenticate: (req) => {
        const token = new URL(req.url).searchParams.get('token')
        if (token === 'banned') throw Object.assign(new Error('banned'), { status: 403 })
        if (token === 'async') return Promise.resolve('later')
        return token ?? undefined
      },
      open: (ws) => opened.push(ws.user),
    },
  })
  t.is((await wsRefused(`${base}/auth`)).status, 401)
  t.is((await wsRefused(`${base}/auth?token=banned`)).status, 403)
  const ada = await wsOpen(t, `${base}/auth?token=ada`)
  const later = await wsOpen(t, `${base}/auth?token=async`)
  t.true(await eventually(() => opened.length === 2))
  t.deepEqual(opened.sort(), ['ada', 'later'])
  t.is(server.stats().wsConnections, 2)
  ada.client.close()
  later.client.close()
})

test('a GET without Upgrade gets 426; the handshake answer is RFC 6455', async (t) => {
  const { url, port } = await startWs(t, { '/echo': { message: (ws, data) => ws.send(data) } })
  const plain = await fetch(`${url}/ws/echo`)
  t.is(plain.status, 426)
  await plain.arrayBuffer()
  const raw = await rawWebSocket(port, '/ws/echo')
  t.is(raw.status, 101)
  t.regex(raw.head, /\r\nupgrade: websocket/i)
  t.regex(raw.head, /\r\nconnection: upgrade/i)
  const accept = /\r\nsec-websocket-accept: *([^\r]+)/i.exec(raw.head)?.[1]
  t.is(accept, wsAccept(raw.key))
  // Hand-made masked frames: a text frame, and a text message in two fragments, echoed back.
  raw.socket.write(wsFrame(0x1, 'raw hello'))
  raw.socket.write(wsFrame(0x1, 'frag', { fin: false }))
  raw.socket.write(wsFrame(0x0, 'mented'))
  t.true(await eventually(() => raw.frames.filter((f) => f.opcode === 0x1).length === 2))
  t.deepEqual(
    raw.frames.filter((f) => f.opcode === 0x1).map((f) => [f.fin, f.payload.toString()]),
    [[true, 'raw hello'], [true, 'fragmented']],
  )
  // A close frame with a code is answered with a close frame, then TCP ends.
  const code = Buffer.alloc(2)
  code.writeUInt16BE(4002)
  raw.socket.write(wsFrame(0x8, code))
  await closedWithin(raw)
  const closeFrame = raw.frames.find((f) => f.opcode === 0x8)
  t.truthy(closeFrame, 'the server answered the close')
  t.is(closeFrame.payload.readUInt16BE(0), 4002)
  const noKey = await connect(port)
  t.teardown(() => noKey.destroy())
  let answer = ''
  noKey.on('data', (chunk) => (answer += chunk.toString('latin1')))
  noKey.write('GET /ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n')
  t.true(await eventually(() => answer.includes('\r\n\r\n')))
  t.regex(answer, /^HTTP\/1\.1 4\d\d /, 'an upgrade without Sec-WebSocket-Key is refused with a 4xx, not 101')
})

test('bad options throw a TypeError naming the option', (t) => {
  t.throws(() => new StreamingApp({ wsMaxMessageSize: 'x' }), { instanceOf: TypeError, message: /wsMaxMessageSize/ })
  t.throws(() => new StreamingApp({ wsIdleTimeout: 'soon' }), { instanceOf: TypeError, message: /wsIdleTimeout/ })
  t.throws(() => new StreamingApp({ wsPingInterval: 'often' }), { instanceOf: TypeError, message: /wsPingInterval/ })
  t.throws(() => new StreamingApp({ wsMaxConnectionsPerUser: -1 }), { instanceOf: TypeError, message: /wsMaxConnectionsPerUser/ })
  t.throws(() => new StreamingApp({ wsMaxMessagesPerSecond: 'lots' }), { instanceOf: TypeError, message: /wsMaxMessagesPerSecond/ })
  t.throws(() => new StreamingApp({ wsMaxConnectionz: 5 }), { instanceOf: TypeError, message: /wsMaxConnectionz/ })
  const app = new StreamingApp()
  t.throws(() => app.ws('/x', { overflow: 'nope' }), { instanceOf: TypeError, message: /overflow/ })
  t.throws(() => app.ws('/x', { rateLimitAction: 'explode' }), { instanceOf: TypeError, message: /rateLimitAction/ })
  t.throws(() => app.ws('/x', { queueBytes: 'lots' }), { instanceOf: TypeError, message: /queueBytes/ })
  t.throws(() => app.ws('/x', { message: 'not a function' }), { instanceOf: TypeError, message: /message/ })
  t.throws(() => app.ws('/x', { authenticate: 42 }), { instanceOf: TypeError, message: /authenticate/ })
  t.throws(() => app.ws('no-slash', {}), { instanceOf: TypeError })
  t.notThrows(() => app.ws('/ok', { overflow: 'close', rateLimitAction: 'pause', queueMessages: 8, queueBytes: '64kb' }))
})

test('ping/pong: a client that answers stays open across many intervals', async (t) => {
  const { server, base } = await startWs(t, { '/ping': {} }, { wsPingInterval: 300, wsPongTimeout: 600, wsIdleTimeout: 0 })
  const c = await wsOpen(t, `${base}/ping`)
  await sleep(2500)
  t.is(c.closed, undefined, 'still open after 2.5 s')
  t.true(c.pings >= 3, `${c.pings} pings in 2.5 s at a 300 ms interval`)
  t.is(server.stats().rejections.ws_pong_timeout ?? 0, 0)
  c.client.close()
})

test('ping/pong: a raw client that never answers is dropped after interval + timeout', async (t) => {
  const closes = []
  const { server, port } = await startWs(
    t,
    { '/ping': { close: (ws, code) => closes.push(code) } },
    { wsPingInterval: 300, wsPongTimeout: 500, wsIdleTimeout: 0 },
  )
  const raw = await rawWebSocket(port, '/ws/ping')
  t.is(raw.status, 101)
  t.teardown(() => raw.socket.destroy())
  await closedWithin(raw)
  // At least interval + timeout after the request (the session cannot start before it), at
  // most a few seconds after the 101 arrived.
  const atLeast = raw.closedAt - raw.requestedAt
  const atMost = raw.closedAt - raw.openedAt
  t.true(atLeast >= 780 && atMost < 4000, `dropped after ${atLeast} ms (300 ms interval + 500 ms timeout)`)
  const ping = raw.frames.find((f) => f.opcode === 0x9)
  t.truthy(ping, 'a ping frame arrived first')
  t.true(ping.at - raw.openedAt < 1500, 'the first ping came after about one interval')
  t.true(await eventually(() => server.stats().rejections.ws_pong_timeout === 1))
  t.true(await eventually(() => closes.length === 1))
  t.deepEqual(closes, [1006])
})

test('server.close sends 1001 to every socket and calls close once for each', async (t) => {
  const closes = []
  const { server, base } = await startWs(t, { '/live': { close: (ws, code) => closes.push(code) } })
  const clients = await Promise.all([1, 2, 3].map(() => wsOpen(t, `${base}/live`)))
  const started = Date.now()
  await server.close({ drain: 3000 })
  t.true(Date.now() - started < 5000)
  const codes = await Promise.all(clients.map((c) => closedWithin(c).then((closed) => closed.code)))
  t.deepEqual(codes, [1001, 1001, 1001])
  t.true(await eventually(() => closes.length === 3))
  await sleep(200)
  t.is(closes.length, 3, 'exactly once each')
})

test('server.close: a socket that never answers the close frame is dropped at the drain deadline', async (t) => {
  const closes = []
  const { server, port } = await startWs(t, { '/live': { close: (ws, code) => closes.push(code) } })
  const raw = await rawWebSocket(port, '/ws/live')
  t.is(raw.status, 101)
  const started = Date.now()
  await server.close({ drain: 500 })
  const took = Date.now() - started
  t.true(took >= 400 && took < 3000, `close took ${took} ms`)
  await closedWithin(raw, 3000)
  t.true(raw.frames.some((frame) => frame.opcode === 8), 'the 1001 close frame was sent first')
  t.true(await eventually(() => closes.length === 1))
  t.deepEqual(closes, [1001])
})

test.serial('publish fans out to 1,000 subscribed sockets from 20 addresses, under the default caps', async (t) => {
  const count = 1000
  const addresses = Array.from({ length: 20 }, (_, i) => `127.0.0.${i + 2}`)
  const { server, base } = await startWs(
    t,
    {
      '/fan': {
        open(ws) {
          ws.subscribe('fan.>')
          ws.send('ready')
        },
      },
    },
    // 50 per address: under the per-IP default (100) and a raised per-address/user cap.
    { wsMaxConnectionsPerUser: 100 },
  )
  const clients = []
  for (let i = 0; i < count; i += 100) {
    const batch = Array.from({ length: 100 }, (_, j) => wsOpen(t, `${base}/fan`, { localAddress: addresses[(i + j) % addresses.length] }))
    clients.push(...(await Promise.all(batch)))
  }
  t.true(await eventually(() => clients.every((c) => c.texts[0] === 'ready'), { timeout: 15_000 }), 'every socket subscribed')
  t.is(server.stats().wsConnections, count)
  const started = Date.now()
  t.is(server.publish('fan.news', 'hello, all'), count)
  t.is(server.publish('fan.obj', { n: 1 }), count)
  t.is(server.publish('other.topic', 'nobody'), 0)
  t.true(await eventually(() => clients.every((c) => c.texts.length === 3), { timeout: 10_000 }))
  const elapsed = Date.now() - started
  t.true(clients.every((c) => c.texts[1] === 'hello, all' && c.texts[2] === '{"n":1}'))
  t.true(elapsed < 10_000, `all ${count} received both in ${elapsed} ms`)
  t.is(server.stats().rejections.ws_limit ?? 0, 0)
  for (const c of clients) c.client.terminate()
  t.true(await eventually(() => server.stats().wsConnections === 0, { timeout: 10_000 }))
})

needs(chromiumTool, test)("a browser's own WebSocket (headless Chromium): echo text and binary, a published message, close code", async (t) => {
  const handled = []
  const app = new StreamingApp({ rateLimitRequests: 0 })
  app.ws('/echo', {
    open(ws) {
      ws.subscribe('browser.>')
      handled.push(['open'])
    },
    message(ws, data, isBinary) {
      handled.push(['message', isBinary ? [...data] : data, isBinary])
      ws.send(data)
    },
    close: (ws, code, reason) => handled.push(['close', code, reason]),
  })
  const { server, reported, running } = await openInChromium(
    t,
    app,
    `const seen = []
    const ws = new WebSocket('ws://' + location.host + '/echo')
    ws.binaryType = 'arraybuffer'
    ws.onopen = () => {
      ws.send('hello from chromium')
      ws.send(new Uint8Array([1, 2, 3, 250]))
    }
    ws.onmessage = (e) => {
      seen.push(typeof e.data === 'string' ? e.data : 'binary:' + Array.from(new Uint8Array(e.data)).join(','))
      if (seen.length === 3) fetch('/report', { method: 'POST', body: JSON.stringify(seen) }).then(() => ws.close(4000, 'done'))
    }`,
  )
  t.true(await eventually(() => running() && handled.filter((h) => h[0] === 'message').length === 2, { timeout: 20_000 }), 'both messages arrived')
  t.is(server.publish('browser.hi', 'published'), 1)
  t.truthy(await eventually(reported, { timeout: 10_000 }), 'the page reported what it saw')
  t.deepEqual(reported(), ['hello from chromium', 'binary:1,2,3,250', 'published'])
  t.true(await eventually(() => handled.some((h) => h[0] === 'close'), { timeout: 5000 }))
  t.deepEqual(handled, [
    ['open'],
    ['message', 'hello from chromium', false],
    ['message', [1, 2, 3, 250], true],
    ['close', 4000, 'done'],
  ])
})
