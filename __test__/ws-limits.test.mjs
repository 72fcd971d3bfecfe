// WebSocket protections: each limit tripped with the close code or status it promises, and
// legitimate traffic passing beside it. Clients are the ws package, on loopback addresses only.
import test from 'ava'
import { startWs, wsOpen, wsRefused, closedWithin, request, sleep, eventually, rawWebSocket, rawExchange, wsFrame, serverProcess } from './helpers.mjs'

const KiB = 1024
const rejections = (server) => server.stats().rejections

test('1009: a single frame over wsMaxMessageSize closes the connection; one under it passes', async (t) => {
  const got = []
  const { server, base } = await startWs(t, { '/in': { message: (ws, data) => got.push(data.length) } }, { wsMaxMessageSize: '64kb' })
  const ok = await wsOpen(t, `${base}/in`)
  ok.client.send(Buffer.alloc(60_000, 1))
  t.true(await eventually(() => got.length === 1))
  t.deepEqual(got, [60_000])
  t.is(ok.closed, undefined)

  const big = await wsOpen(t, `${base}/in`)
  const sent = Date.now()
  big.client.send(Buffer.alloc(70_000, 2))
  const closed = await closedWithin(big)
  t.is(closed.code, 1009)
  t.true(closed.at - sent < 2000, `the connection ended ${closed.at - sent} ms after the oversize frame`)
  t.true(await eventually(() => server.stats().wsConnections === 1), 'its session is gone')
  t.deepEqual(got, [60_000], 'the oversize message never reached the handler')
  t.is(rejections(server).ws_message_too_large, 1)
  t.is(ok.closed, undefined, 'the other connection is unaffected')
})

test('1009: a fragmented message whose fragments each fit but whose total does not', async (t) => {
  const got = []
  const { server, base } = await startWs(t, { '/in': { message: (ws, data, isBinary) => got.push([data.length, isBinary]) } }, { wsMaxMessageSize: '64kb' })
  const ok = await wsOpen(t, `${base}/in`)
  ok.client.send(Buffer.alloc(20_000, 1), { fin: false })
  ok.client.send(Buffer.alloc(20_000, 2), { fin: true })
  t.true(await eventually(() => got.length === 1))
  t.deepEqual(got, [[40_000, true]], 'fragments under the limit arrive as one message')

  const c = await wsOpen(t, `${base}/in`)
  c.client.send(Buffer.alloc(30_000, 3), { fin: false })
  c.client.send(Buffer.alloc(30_000, 4), { fin: false })
  const sent = Date.now()
  c.client.send(Buffer.alloc(30_000, 5), { fin: true })
  const closed = await closedWithin(c)
  t.is(closed.code, 1009)
  t.true(closed.at - sent < 2000, `the connection ended ${closed.at - sent} ms after the fragment that went over`)
  t.true(await eventually(() => server.stats().wsConnections === 1), 'its session is gone')
  t.deepEqual(got, [[40_000, true]])
  t.is(rejections(server).ws_message_too_large, 1)
  t.is(ok.closed, undefined)
})

test('1008: a message flood over wsMaxMessagesPerSecond closes the connection', async (t) => {
  let count = 0
  const { server, base } = await startWs(t, { '/in': { message: () => count++ } }, { wsMaxMessagesPerSecond: 20 })
  const c = await wsOpen(t, `${base}/in`)
  for (let i = 0; i < 200; i++) c.client.send(`m${i}`)
  const closed = await closedWithin(c)
  t.is(closed.code, 1008)
  t.true(count < 200, `${count} of 200 flooded messages were handled before the close`)
  t.is(rejections(server).ws_rate_limited, 1)
})

test('1008: bytes over wsMaxBytesPerSecond close the connection', async (t) => {
  const { server, base } = await startWs(t, { '/in': {} }, { wsMaxBytesPerSecond: '64kb', wsMaxMessageSize: '64kb', wsMaxMessagesPerSecond: 0 })
  const c = await wsOpen(t, `${base}/in`)
  for (let i = 0; i < 20; i++) c.client.send(Buffer.alloc(32 * KiB, i))
  const closed = await closedWithin(c)
  t.is(closed.code, 1008)
  t.is(rejections(server).ws_rate_limited, 1)
})

test("rateLimitAction 'pause': a flood is slowed, not closed, and every message arrives in order", async (t) => {
  const got = []
  const { server, base } = await startWs(
    t,
    { '/in': { rateLimitAction: 'pause', message: (ws, data) => got.push(data) } },
    { wsMaxMessagesPerSecond: 20 },
  )
  const c = await wsOpen(t, `${base}/in`)
  const started = Date.now()
  for (let i = 0; i < 60; i++) c.client.send(`m${i}`)
  t.true(await eventually(() => got.length === 60, { timeout: 15_000 }), `${got.length} of 60 arrived`)
  const elapsed = Date.now() - started
  t.deepEqual(got, Array.from({ length: 60 }, (_, i) => `m${i}`))
  // 60 messages at 20/s: at least 40 of them wait for the rate, about 2 s.
  t.true(elapsed >= 1000, `60 messages at 20/s took ${elapsed} ms`)
  await sleep(300)
  t.is(c.closed, undefined, 'still open')
  t.is(server.stats().wsConnections, 1)
})

test("1000 'Idle timeout' after wsIdleTimeout without a message; a talking client stays", async (t) => {
  const { server, base } = await startWs(t, { '/in': {} }, { wsIdleTimeout: '1s', wsPingInterval: 0 })
  const [quiet, talker] = await Promise.all([wsOpen(t, `${base}/in`), wsOpen(t, `${base}/in`)])
  const chatter = setInterval(() => talker.client.send('still here'), 300)
  t.teardown(() => clearInterval(chatter))
  const closed = await closedWithin(quiet)
  const lived = closed.at - quiet.openedAt
  t.is(closed.code, 1000)
  t.is(closed.reason, 'Idle timeout')
  t.true(lived >= 800 && lived < 4000, `idle close after ${lived} ms (timeout 1 s)`)
  t.is(rejections(server).ws_idle_timeout, 1)
  await sleep(Math.max(0, 2500 - (Date.now() - talker.openedAt)))
  t.is(talker.closed, undefined, 'a client sending every 300 ms is not idle')
  clearInterval(chatter)
  talker.client.close()
})

test('a client that never answers the close frame is dropped 5 s after it; JS hears the server close once', async (t) => {
  const closes = []
  const { port } = await startWs(t, { '/in': { close: (ws, code, reason) => closes.push([code, reason]) } }, { wsIdleTimeout: 300, wsPingInterval: 0 })
  const raw = await rawWebSocket(port, '/ws/in')
  await closedWithin(raw, 15_000)
  const close = raw.frames.find((frame) => frame.opcode === 8)
  t.truthy(close, 'the idle close frame came first')
  t.is(close.payload.readUInt16BE(0), 1000)
  const waited = raw.closedAt - close.at
  // +7 s of slack for a loaded machine; a socket never dropped still fails (closedWithin above).
  t.true(waited >= 4500 && waited < 12_000, `the socket was dropped ${waited} ms after the unanswered close frame`)
  t.true(await eventually(() => closes.length === 1))
  t.deepEqual(closes, [[1000, 'Idle timeout']])
})

test('client pings keep a socket from idling only with wsIdleCountsPings', async (t) => {
  const open = async (wsIdleCountsPings) => {
    const { base } = await startWs(t, { '/in': {} }, { wsIdleTimeout: '1s', wsPingInterval: 0, wsIdleCountsPings })
    const socket = await wsOpen(t, `${base}/in`)
    const pinging = setInterval(() => socket.client.ping(), 300)
    t.teardown(() => clearInterval(pinging))
    return socket
  }
  const [strict, lenient] = await Promise.all([open(false), open(true)])
  const closed = await closedWithin(strict)
  t.is(closed.code, 1000, 'pings alone do not count as activity by default')
  t.is(closed.reason, 'Idle timeout')
  await sleep(Math.max(0, 2500 - (Date.now() - lenient.openedAt)))
  t.is(lenient.closed, undefined, 'with wsIdleCountsPings a pinging client stays')
  lenient.client.close()
})

test("1013: overflow 'close' ends a connection whose client stopped reading", async (t) => {
  const closes = []
  const { server, base } = await startWs(t, {
    '/firehose': {
      queueMessages: 8,
      queueBytes: '256kb',
      overflow: 'close',
      open: (ws) => ws.subscribe('firehose'),
      close: (ws, code) => closes.push(code),
    },
  })
  const c = await wsOpen(t, `${base}/firehose`)
  await eventually(() => server.publish('firehose', 'warm') === 1)
  c.client._socket.pause() // stops reading: the kernel buffers fill, then the server's queue
  const big = 'x'.repeat(64 * KiB)
  for (let i = 0; i < 800 && !rejections(server).ws_overflow; i++) {
    server.publish('firehose', big)
    if (i % 50 === 49) await sleep(10)
  }
  t.true(await eventually(() => rejections(server).ws_overflow === 1), 'the overflow was counted')
  c.client._socket.resume()
  const closed = await closedWithin(c)
  t.is(closed.code, 1013, 'the client reads what was sent, then a close frame with 1013')
  t.true(await eventually(() => closes.length === 1))
  t.true(await eventually(() => server.stats().wsConnections === 0))
})

test("dropOldest: a client that never reads keeps a bounded queue, drops counted; the server stays responsive", async (t) => {
  let stuckWs
  const { server, base, url } = await startWs(t, {
    '/firehose': {
      queueMessages: 16,
      open(ws) {
        if (new URL(ws.url, 'http://x').searchParams.has('stuck')) stuckWs = ws
        ws.subscribe('firehose')
      },
    },
    '/echo': { message: (ws, data) => ws.send(data) },
  }, {}, { setup: (app) => app.get('/ping', () => 'pong') })
  const stuck = await wsOpen(t, `${base}/firehose?stuck`)
  t.true(await eventually(() => stuckWs && server.publish('firehose', 'warm') === 1))
  await eventually(() => stuck.texts.length === 1)
  stuck.client._socket.pause()
  const big = 'x'.repeat(64 * KiB)
  let maxBuffered = 0
  const total = 2000
  for (let i = 0; i < total; i++) {
    server.publish('firehose', `${i}:${big}`)
    if (i % 100 === 99) {
      maxBuffered = Math.max(maxBuffered, stuckWs.bufferedAmount)
      await sleep(5)
    }
  }
  await sleep(200)
  maxBuffered = Math.max(maxBuffered, stuckWs.bufferedAmount)
  const dropped = rejections(server).ws_message_dropped
  t.true(dropped > 1000, `${dropped} of ${total} messages dropped`)
  t.true(maxBuffered <= 1.25 * 1024 * KiB, `bufferedAmount peaked at ${maxBuffered} bytes (queue: 16 messages, 1mb)`)
  t.true(maxBuffered > 0, 'bufferedAmount reports the queue')
  t.is(rejections(server).ws_overflow ?? 0, 0)

  // The server still answers everyone else at once.
  const echo = await wsOpen(t, `${base}/echo`)
  const sent = Date.now()
  echo.client.send('are you there')
  t.true(await eventually(() => echo.texts.length === 1, { timeout: 2000 }))
  t.true(Date.now() - sent < 1000, `echo took ${Date.now() - sent} ms`)
  t.is((await request(`${url}/ws/ping`)).status, 200)

  // Once it reads again it gets the newest messages; it was never closed.
  stuck.client._socket.resume()
  t.true(await eventually(() => stuck.texts.at(-1)?.startsWith(`${total - 1}:`), { timeout: 10_000 }), 'the last message arrives')
  t.true(stuck.texts.length < total / 2, `${stuck.texts.length} messages delivered`)
  t.is(stuck.closed, undefined)
  stuck.client.close()
  echo.client.close()
})

test('per-user cap: 429 + Retry-After before 101; the slot is freed after a close', async (t) => {
  const { server, base } = await startWs(
    t,
    { '/u': { authenticate: (req) => new URL(req.url).searchParams.get('u') } },
    { wsMaxConnectionsPerUser: 2 },
  )
  const first = await wsOpen(t, `${base}/u?u=ada`)
  const second = await wsOpen(t, `${base}/u?u=ada`)
  const refused = await wsRefused(`${base}/u?u=ada`)
  t.is(refused.status, 429)
  t.truthy(refused.headers['retry-after'], 'Retry-After is set')
  t.is(rejections(server).ws_limit, 1)
  const bob = await wsOpen(t, `${base}/u?u=bob`)
  t.true(await eventually(() => server.stats().wsConnections === 3))
  first.client.close()
  await closedWithin(first)
  const reopened = await eventually(async () => {
    try {
      return await wsOpen(t, `${base}/u?u=ada`)
    } catch {
      return false
    }
  }, { timeout: 5000 })
  t.truthy(reopened, 'a new connection is accepted once one closed')
  t.is(reopened.closed, undefined)
  for (const c of [second, bob, reopened]) c.client.close()
})

test('per-user cap without authenticate: anonymous sockets are capped per client address', async (t) => {
  const { server, base } = await startWs(t, { '/anon': {} }, { wsMaxConnectionsPerUser: 2, wsMaxConnectionsPerIp: 0 })
  const held = [await wsOpen(t, `${base}/anon`, { localAddress: '127.0.0.6' }), await wsOpen(t, `${base}/anon`, { localAddress: '127.0.0.6' })]
  const refused = await wsRefused(`${base}/anon`, { localAddress: '127.0.0.6' })
  t.is(refused.status, 429)
  t.truthy(refused.headers['retry-after'])
  held.push(await wsOpen(t, `${base}/anon`, { localAddress: '127.0.0.7' }))
  t.true(await eventually(() => server.stats().wsConnections === 3))
  t.is(rejections(server).ws_limit, 1)
  for (const c of held) c.client.close()
})

test('per-IP cap: 429 over it for that address whatever the user; other addresses unaffected', async (t) => {
  const seen = []
  const { server, base } = await startWs(
    t,
    {
      '/ip': {
        authenticate: (req) => new URL(req.url).searchParams.get('u'),
        open: (ws) => seen.push(ws.remoteAddress),
      },
    },
    { wsMaxConnectionsPerIp: 3, wsMaxConnectionsPerUser: 0 },
  )
  const held = []
  // The gauge counts a session once its task has taken the socket, just after the 101.
  for (const u of ['a', 'b', 'c']) held.push(await wsOpen(t, `${base}/ip?u=${u}`, { localAddress: '127.0.0.2' }))
  const refused = await wsRefused(`${base}/ip?u=d`, { localAddress: '127.0.0.2' })
  t.is(refused.status, 429)
  t.truthy(refused.headers['retry-after'])
  t.is(rejections(server).ws_limit, 1)
  for (const u of ['e', 'f', 'g']) held.push(await wsOpen(t, `${base}/ip?u=${u}`, { localAddress: '127.0.0.3' }))
  held.push(await wsOpen(t, `${base}/ip?u=h`, { localAddress: '127.0.0.4' }))
  t.true(await eventually(() => server.stats().wsConnections === 7))
  t.true(await eventually(() => seen.length === 7))
  t.deepEqual(seen.filter((a) => a === '127.0.0.2').length, 3)
  t.is(rejections(server).ws_limit, 1, 'nobody else was refused')
  for (const c of held) c.client.close()
})

test('app total wsMaxConnections: 503 over it', async (t) => {
  const { server, base } = await startWs(t, { '/all': {} }, { wsMaxConnections: 2 })
  const a = await wsOpen(t, `${base}/all`, { localAddress: '127.0.0.2' })
  const b = await wsOpen(t, `${base}/all`, { localAddress: '127.0.0.3' })
  const refused = await wsRefused(`${base}/all`, { localAddress: '127.0.0.4' })
  t.is(refused.status, 503)
  t.is(rejections(server).ws_limit, 1)
  a.client.close()
  await closedWithin(a)
  const again = await eventually(async () => {
    try {
      return await wsOpen(t, `${base}/all`, { localAddress: '127.0.0.4' })
    } catch {
      return false
    }
  })
  t.truthy(again, 'a slot freed by a close is usable')
  b.client.close()
  again.client.close()
})

test('legitimate traffic passes every protection: a normal client under all limits is never closed', async (t) => {
  const got = []
  const closes = []
  const { server, base } = await startWs(
    t,
    {
      '/app': {
        authenticate: (req) => new URL(req.url).searchParams.get('u'),
        queueMessages: 16,
        open: (ws) => ws.subscribe(`user.${ws.user}.>`),
        message(ws, data) {
          got.push(data.length)
          ws.send(data)
        },
        close: (ws, code) => closes.push(code),
      },
    },
    {
      wsMaxMessageSize: '64kb',
      wsIdleTimeout: '1s',
      wsMaxConnectionsPerUser: 2,
      wsMaxConnectionsPerIp: 4,
      wsMaxMessagesPerSecond: 20,
      wsMaxBytesPerSecond: '512kb',
      wsPingInterval: 300,
      wsPongTimeout: 1000,
    },
  )
  const c = await wsOpen(t, `${base}/app?u=ada`)
  const message = Buffer.alloc(60_000, 9) // just under the size limit, 5 a second: 300 KB/s
  const sent = []
  const started = Date.now()
  while (Date.now() - started < 3000) {
    c.client.send(message)
    sent.push(message.length)
    server.publish('user.ada.note', `note ${sent.length}`)
    await sleep(200)
  }
  t.true(await eventually(() => c.messages.filter((m) => m.isBinary).length === sent.length))
  t.deepEqual(got, sent)
  t.true(c.messages.filter((m) => m.isBinary).every((m) => m.data.equals(message)))
  t.is(c.texts.length, sent.length, 'every published note arrived')
  t.true(c.pings >= 3, `${c.pings} pings answered`)
  t.is(c.closed, undefined)
  t.deepEqual(closes, [])
  const limits = ['ws_limit', 'ws_message_too_large', 'ws_rate_limited', 'ws_idle_timeout', 'ws_pong_timeout', 'ws_message_dropped', 'ws_overflow']
  t.deepEqual(
    limits.map((name) => [name, rejections(server)[name] ?? 0]),
    limits.map((name) => [name, 0]),
  )
  c.client.close(1000)
  t.is((await closedWithin(c)).code, 1000)
  t.true(await eventually(() => closes.length === 1))
  t.deepEqual(closes, [1000])
})

// Serial: it blocks this process's JS thread, which the other tests' clients share.
test.serial('a JS thread that falls behind stops the socket being read: at most about 1 MiB waits for JS', async (t) => {
  let blocked = false
  let readWhenBack
  const { server, port } = await startWs(
    t,
    {
      '/in': {
        message: () => {
          if (!blocked) {
            blocked = true
            const until = Date.now() + 1500
            while (Date.now() < until); // the JS thread is busy; Rust goes on reading meanwhile
          } else if (readWhenBack === undefined) {
            readWhenBack = server.stats().bytesReceived
          }
        },
      },
    },
    { wsMaxMessagesPerSecond: 0, wsMaxMessageSize: '128kb' },
  )
  // The sender is its own process, so it keeps writing while this thread is blocked.
  const { spawn } = await import('node:child_process')
  const { createRequire } = await import('node:module')
  const wsPath = createRequire(import.meta.url).resolve('ws')
  const sender = spawn(
    process.execPath,
    [
      '-e',
      `const WebSocket = require(${JSON.stringify(wsPath)});
       const ws = new WebSocket('ws://127.0.0.1:${port}/ws/in', { perMessageDeflate: false });
       const chunk = Buffer.alloc(64 * 1024, 1);
       ws.on('open', () => { for (let i = 0; i < 128; i++) ws.send(chunk); });
       setTimeout(() => process.exit(0), 8000);`,
    ],
    { stdio: 'ignore' },
  )
  sender.on('error', (error) => t.log(`sender: ${error.message}`)) // then no message arrives, and the waits below fail
  t.teardown(() => sender.kill('SIGKILL'))
  t.truthy(await eventually(() => readWhenBack !== undefined, { timeout: 10_000 }), 'JS got messages after the block')
  const MiB = 1024 * KiB
  // 8 MiB were sent; while JS was blocked, the server read the 1 MiB backlog plus what was
  // in flight (a message being parsed, the handshake), not everything the kernel could buffer.
  t.true(readWhenBack < 2.5 * MiB, `read ${(readWhenBack / MiB).toFixed(2)} MiB while JS was blocked`)
  await eventually(() => server.stats().wsMessagesIn >= 128, { timeout: 10_000 })
  t.is(server.stats().wsMessagesIn, 128, 'and every message arrived once JS caught up')
})

test('a client that stops reading altogether is cut off at sendTimeout (1006), its slot freed', async (t) => {
  const closes = []
  let opened
  const { server, base } = await startWs(
    t,
    {
      '/firehose': {
        open: (ws) => {
          opened = ws
          ws.subscribe('firehose')
        },
        close: (ws, code) => closes.push({ code, at: Date.now() }),
      },
    },
    { sendTimeout: '1s', wsPingInterval: 0, wsIdleTimeout: 0, wsMaxConnectionsPerUser: 1 },
  )
  const stuck = await wsOpen(t, `${base}/firehose`)
  t.truthy(await eventually(() => opened))
  stuck.client._socket.pause() // reads nothing from now on
  const big = 'x'.repeat(64 * KiB)
  // More than the socket buffers hold, so the server's writes stall.
  for (let i = 0; i < 400 && closes.length === 0; i++) {
    server.publish('firehose', big)
    if (i % 50 === 49) await sleep(20)
  }
  const stalledAt = Date.now()
  t.truthy(await eventually(() => closes.length === 1, { timeout: 10_000 }), 'the server ended the session')
  t.is(closes[0].code, 1006)
  t.true(closes[0].at - stalledAt < 8000, `cut off ${closes[0].at - stalledAt} ms after the last publish`)
  t.true(rejections(server).send_timeout >= 1)
  // The per-user (here: per-address) slot is free again.
  const again = await wsOpen(t, `${base}/firehose`)
  t.is(again.closed, undefined)
  again.client.close()
})

test('malformed frames: text that is not UTF-8 closes with 1007, an unmasked frame with 1002', async (t) => {
  const closes = []
  const { server, port } = await startWs(t, {
    '/in': { message: () => t.fail('no malformed message reaches JS'), close: (ws, code) => closes.push(code) },
  })
  const closeCode = async (bytes) => {
    const raw = await rawWebSocket(port, '/ws/in')
    t.is(raw.status, 101)
    raw.socket.write(bytes)
    await closedWithin(raw)
    return raw.frames.find((frame) => frame.opcode === 0x8)?.payload.readUInt16BE(0)
  }
  t.is(await closeCode(wsFrame(0x1, Buffer.from([0x68, 0xff, 0xfe]))), 1007)
  // FIN + text, length 2, no mask bit: a client must mask every frame (RFC 6455 5.1).
  t.is(await closeCode(Buffer.from([0x81, 0x02, 0x68, 0x69])), 1002)
  t.true(await eventually(() => closes.length === 2))
  t.deepEqual(closes.sort(), [1002, 1007])
  t.is(rejections(server).ws_protocol_error, 2)
})

// ---- Pings: answered with coalesced pongs, counted toward wsMaxMessagesPerSecond ----

const PING_FLOOD = 100_000
/** `count` masked pings of 125 bytes (the largest control payload), in writes of 1,000. */
function pingFlood(count) {
  const one = wsFrame(0x9, Buffer.alloc(125, 0x70))
  const chunk = Buffer.concat(Array(1000).fill(one))
  return Array.from({ length: Math.ceil(count / 1000) }, () => chunk)
}

/** A server process of its own (so its memory is measured alone) with a closing and a pausing route. */
const pingServer = (t) =>
  serverProcess(
    t,
    `const { Server, StreamingApp } = floodgate
    const server = new Server()
    const app = new StreamingApp({ rateLimitRequests: 0, wsPingInterval: 0 })
    app.ws('/close', {})
    app.ws('/pause', { rateLimitAction: 'pause' })
    server.mount('/ws', app)
    server.mount('/stats', () => Response.json(server.stats().rejections))
    server.listen({ port: 0, host: '127.0.0.1' }).then(({ port }) => console.log('READY ' + port))`,
  )

/** Writes the flood without waiting for the server to take it, and tracks the server's peak RSS for `ms`. */
async function floodAndWatch(raw, rss, ms) {
  const before = rss()
  for (const chunk of pingFlood(PING_FLOOD)) raw.socket.write(chunk)
  let peak = before
  const until = Date.now() + ms
  while (Date.now() < until) {
    peak = Math.max(peak, rss())
    await sleep(50)
  }
  return (peak - before) / 2 ** 20
}

test('a ping flood from a client that never reads: server memory stays flat, the socket closes 1008 (ws_rate_limited)', async (t) => {
  const { port, rss } = await pingServer(t)
  const raw = await rawWebSocket(port, '/ws/close')
  t.is(raw.status, 101)
  raw.socket.pause() // reads nothing until the flood is over
  const growth = await floodAndWatch(raw, rss, 2000)
  t.log(`server RSS growth: ${growth.toFixed(1)} MiB for ${PING_FLOOD} pings of 125 bytes (${((PING_FLOOD * 131) / 2 ** 20).toFixed(1)} MiB sent)`)
  t.true(growth < 4, `server memory grew ${growth.toFixed(1)} MiB`)
  raw.socket.resume()
  await closedWithin(raw, 15_000)
  const closes = raw.frames.filter((frame) => frame.opcode === 0x8)
  t.is(closes.length, 1)
  t.is(closes[0].payload.readUInt16BE(0), 1008)
  const pongs = raw.frames.filter((frame) => frame.opcode === 0xa).length
  t.true(pongs <= 100, `${pongs} pongs for ${PING_FLOOD} pings`)
  const counted = await (await fetch(`http://127.0.0.1:${port}/stats`)).json()
  t.is(counted.ws_rate_limited, 1)
  t.is(counted.ws_protocol_error, 0)
})

test("a ping flood under rateLimitAction 'pause': memory stays flat, the socket stays open and is answered", async (t) => {
  const { port, rss } = await pingServer(t)
  const raw = await rawWebSocket(port, '/ws/pause')
  raw.socket.pause()
  const growth = await floodAndWatch(raw, rss, 2000)
  t.log(`server RSS growth: ${growth.toFixed(1)} MiB for ${PING_FLOOD} pings, reading paused`)
  t.true(growth < 4, `server memory grew ${growth.toFixed(1)} MiB`)
  t.false(raw.closed)
  raw.socket.resume()
  t.truthy(await eventually(() => raw.frames.some((frame) => frame.opcode === 0xa)), 'pongs arrive once the client reads')
  t.false(raw.closed)
  t.false(raw.frames.some((frame) => frame.opcode === 0x8), 'no close frame')
  const counted = await (await fetch(`http://127.0.0.1:${port}/stats`)).json()
  t.is(counted.ws_rate_limited, 0, "a pause is not a rejection")
  raw.socket.destroy()
})

test('a client that pings at a normal rate and reads gets the latest pong each time and stays open', async (t) => {
  const { server, base } = await startWs(t, { '/in': { message: (ws, data) => ws.send(data) } }, { wsPingInterval: 0 })
  const c = await wsOpen(t, `${base}/in`)
  const pongs = []
  c.client.on('pong', (data) => pongs.push(data.toString()))
  // 40 pings and 40 messages a second: 80 of the default 100 per second.
  for (let i = 0; i < 40; i++) {
    c.client.ping(`p${i}`)
    c.client.send(`m${i}`)
    await sleep(25)
  }
  t.truthy(await eventually(() => pongs.at(-1) === 'p39'), `the last ping was answered (${pongs.at(-1)})`)
  const order = pongs.map((p) => Number(p.slice(1)))
  t.deepEqual(order, [...order].sort((a, b) => a - b), 'pongs in ping order')
  t.true(pongs.length >= 20, `${pongs.length} of 40 pings answered separately`)
  t.truthy(await eventually(() => c.texts.length === 40))
  t.is(c.closed, undefined)
  t.is(rejections(server).ws_rate_limited, 0)
  c.client.close(1000)
  t.is((await closedWithin(c)).code, 1000)
})

test('a flood of pings and pongs over the rate closes 1008 like a flood of messages', async (t) => {
  const { server, port } = await startWs(t, { '/in': {} }, { wsMaxMessagesPerSecond: 20, wsPingInterval: 0 })
  for (const opcode of [0x9, 0xa]) {
    const raw = await rawWebSocket(port, '/ws/in')
    raw.socket.write(Buffer.concat(Array.from({ length: 50 }, (_, i) => wsFrame(opcode, Buffer.from(`x${i}`)))))
    await closedWithin(raw, 15_000)
    t.is(raw.frames.find((frame) => frame.opcode === 0x8)?.payload.readUInt16BE(0), 1008, `opcode ${opcode}`)
  }
  t.is(rejections(server).ws_rate_limited, 2)
})

// ---- Counters: one count per refusal ----

test('ws_protocol_error counts exactly the sessions closed 1002/1007; handshake refusals are ws_bad_handshake', async (t) => {
  const closes = []
  const { server, port } = await startWs(t, {
    '/in': { message: () => {}, close: (ws, code) => closes.push(code) },
    '/strict': { close: (ws, code) => closes.push(code) },
  }, { wsMaxMessagesPerSecond: 5, wsPingInterval: 0 })
  const text = (s) => Buffer.from(s)
  const withRsv1 = (frame) => {
    frame[0] |= 0x40
    return frame
  }
  const violations = [
    ['unmasked frame', Buffer.from([0x81, 0x02, 0x68, 0x69]), 1002],
    ['reserved bit', withRsv1(wsFrame(0x1, text('x'))), 1002],
    ['reserved data opcode', wsFrame(0x3, text('x')), 1002],
    ['reserved control opcode', wsFrame(0xb), 1002],
    ['fragmented ping', wsFrame(0x9, text('p'), { fin: false }), 1002],
    ['ping over 125 bytes', wsFrame(0x9, Buffer.alloc(126)), 1002],
    ['continuation with nothing to continue', wsFrame(0x0, text('x')), 1002],
    ['new message inside a fragmented one', Buffer.concat([wsFrame(0x1, text('a'), { fin: false }), wsFrame(0x1, text('b'))]), 1002],
    ['close code 1005 on the wire', wsFrame(0x8, Buffer.from([0x03, 0xed])), 1002],
    ['one-byte close payload', wsFrame(0x8, Buffer.from([0x03])), 1002],
    ['text not UTF-8', wsFrame(0x1, Buffer.from([0x68, 0xff, 0xfe])), 1007],
    ['fragmented text not UTF-8', Buffer.concat([wsFrame(0x1, Buffer.from([0xe2, 0x82]), { fin: false }), wsFrame(0x0, Buffer.from([0xff]))]), 1007],
    ['close reason not UTF-8', wsFrame(0x8, Buffer.from([0x03, 0xe8, 0xff])), 1007],
  ]
  // One socket at a time: the per-address cap (10) would refuse some of 13 at once.
  for (const [what, bytes, expected] of violations) {
    const raw = await rawWebSocket(port, '/ws/in')
    t.is(raw.status, 101, what)
    raw.socket.write(bytes)
    await closedWithin(raw)
    t.is(raw.frames.find((frame) => frame.opcode === 0x8)?.payload.readUInt16BE(0), expected, what)
  }
  t.true(await eventually(() => closes.length === violations.length))
  t.is(rejections(server).ws_protocol_error, violations.length)

  // Closed 1008 first, then a violation: a rate close, counted once, not a protocol error.
  const flooded = await rawWebSocket(port, '/ws/strict')
  flooded.socket.write(Buffer.concat([...Array.from({ length: 10 }, () => wsFrame(0x1, text('m'))), Buffer.from([0x81, 0x02, 0x68, 0x69])]))
  await closedWithin(flooded, 15_000)
  t.is(flooded.frames.find((frame) => frame.opcode === 0x8)?.payload.readUInt16BE(0), 1008)
  t.is(rejections(server).ws_rate_limited, 1)
  t.is(rejections(server).ws_protocol_error, violations.length, 'input after the server closed is not counted')

  // Refused before the 101: counted apart, one each.
  const key = 'dGhlIHNhbXBsZSBub25jZQ=='
  const head = (lines) => `${lines.join('\r\n')}\r\nHost: 127.0.0.1\r\n\r\n`
  const upgrade = ['Upgrade: websocket', 'Connection: Upgrade, close']
  const refusals = [
    ['plain GET', head(['GET /ws/in HTTP/1.1', 'Connection: close']), 426],
    ['POST upgrade', head(['POST /ws/in HTTP/1.1', ...upgrade, 'Sec-WebSocket-Version: 13', `Sec-WebSocket-Key: ${key}`, 'Content-Length: 0']), 400],
    ['version 8', head(['GET /ws/in HTTP/1.1', ...upgrade, 'Sec-WebSocket-Version: 8', `Sec-WebSocket-Key: ${key}`]), 400],
    ['no Sec-WebSocket-Key', head(['GET /ws/in HTTP/1.1', ...upgrade, 'Sec-WebSocket-Version: 13']), 400],
  ]
  for (const [what, payload, status] of refusals) {
    const answer = await rawExchange(port, payload)
    t.is(Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1]), status, what)
  }
  t.is(rejections(server).ws_bad_handshake, refusals.length)
  t.is(rejections(server).ws_protocol_error, violations.length)
})
