// WebSockets as the protocol says (issue 17): replies to valid messages go out before the close
// frame that refuses the input behind them; text fails at the fragment where it stops being
// UTF-8; close codes outside the allowed ranges get 1002. Raw sockets, so each frame is exact.
import test from 'ava'
import { StreamingApp, WebSocketClient, startWs, wsOpen, wsRefused, rawWebSocket, wsFrame, closedWithin, eventually, openInChromium, needs, chromiumTool } from './helpers.mjs'

/** A close frame's payload from the client: code, then reason. */
const closePayload = (code, reason = '') => Buffer.concat([Buffer.from([code >> 8, code & 0xff]), Buffer.from(reason)])

async function echoServer(t, options = {}) {
  const closes = []
  const started = await startWs(
    t,
    {
      '/echo': {
        message: (ws, data) => ws.send(data),
        close: (ws, code, reason) => closes.push([code, reason]),
      },
    },
    { wsPingInterval: 0, ...options },
  )
  return { ...started, closes }
}

const badFrames = {
  'a reserved bit': Buffer.from([0xc1, 0x80, 0, 0, 0, 0]),
  'a reserved opcode': Buffer.from([0x83, 0x80, 0, 0, 0, 0]),
  'a fragmented ping': Buffer.from([0x09, 0x80, 0, 0, 0, 0]),
  'a continuation with nothing to continue': wsFrame(0x0, 'x'),
  'close code 5000': wsFrame(0x8, closePayload(5000)),
  'close code 65535': wsFrame(0x8, closePayload(65535)),
  'close code 1005 on the wire': wsFrame(0x8, closePayload(1005)),
}

for (const [what, bad] of Object.entries(badFrames)) {
  test(`1002 for ${what}, after the echoes of the messages before it`, async (t) => {
    const { server, port, closes } = await echoServer(t)
    const raw = await rawWebSocket(port, '/ws/echo')
    raw.socket.write(Buffer.concat([wsFrame(0x1, 'first'), wsFrame(0x2, Buffer.from([1, 2, 3])), bad]))
    await closedWithin(raw)
    const frames = raw.frames.map((frame) => [frame.opcode, frame.opcode === 8 ? frame.payload.readUInt16BE(0) : frame.payload.toString('latin1')])
    t.deepEqual(frames, [
      [1, 'first'],
      [2, '\x01\x02\x03'],
      [8, 1002],
    ])
    t.true(await eventually(() => closes.length === 1))
    t.deepEqual(closes, [[1002, 'Protocol error']])
    t.is(server.stats().rejections.ws_protocol_error, 1)
  })
}

test('allowed close codes (1000, 3000, 4999) are echoed, not refused', async (t) => {
  const { server, port } = await echoServer(t)
  for (const code of [1000, 3000, 4999]) {
    const raw = await rawWebSocket(port, '/ws/echo')
    raw.socket.write(wsFrame(0x8, closePayload(code, 'bye')))
    await closedWithin(raw)
    t.is(raw.frames.at(-1).opcode, 8)
    t.is(raw.frames.at(-1).payload.readUInt16BE(0), code)
  }
  t.is(server.stats().rejections.ws_protocol_error ?? 0, 0)
})

test('bad UTF-8 fails at the fragment where it appears, before the message completes (1007)', async (t) => {
  const { port, closes } = await echoServer(t)
  const raw = await rawWebSocket(port, '/ws/echo')
  const sent = Date.now()
  // "κόσμε", then a sequence past U+10FFFF; the final fragment never comes.
  raw.socket.write(Buffer.concat([wsFrame(0x1, 'κόσμε', { fin: false }), wsFrame(0x0, Buffer.from([0xf4, 0x90, 0x80, 0x80]), { fin: false })]))
  await closedWithin(raw)
  const close = raw.frames.find((frame) => frame.opcode === 8)
  t.is(close.payload.readUInt16BE(0), 1007)
  t.true(close.at - sent < 3000, `closed ${close.at - sent} ms after the bad fragment`)
  t.true(await eventually(() => closes.length === 1))
  t.is(closes[0][0], 1007)
})

test('bad UTF-8 fails inside a frame that is still arriving; valid text cut anywhere passes', async (t) => {
  const { port } = await echoServer(t)
  const bad = await rawWebSocket(port, '/ws/echo')
  const payload = Buffer.alloc(1000, 'x')
  Buffer.from([0x61, 0xed, 0xa0, 0x80]).copy(payload) // "a" then a UTF-16 surrogate
  const frame = wsFrame(0x1, payload)
  bad.socket.write(frame.subarray(0, 20))
  await closedWithin(bad)
  t.is(bad.frames.find((f) => f.opcode === 8).payload.readUInt16BE(0), 1007)

  const good = await rawWebSocket(port, '/ws/echo')
  const text = 'ab🦀κ'.repeat(50)
  const whole = Buffer.concat([wsFrame(0x1, text.slice(0, 30), { fin: false }), wsFrame(0x0, text.slice(30))])
  for (let at = 0; at < whole.length; at += 7) {
    good.socket.write(whole.subarray(at, at + 7))
    await new Promise((resolve) => setImmediate(resolve))
  }
  t.true(await eventually(() => good.frames.length === 1))
  t.is(good.frames[0].payload.toString(), text)
  good.socket.destroy()
})

// Subprotocols: `protocols` (the server's preference), `selectProtocol(offered, req)`,
// `requireProtocol`.

test('protocols: the first the route prefers among those offered is answered and is ws.protocol', async (t) => {
  const opened = []
  const { base, server } = await startWs(t, {
    '/gql': { protocols: ['graphql-transport-ws', 'mqtt'], open: (ws) => opened.push(ws.protocol), message: (ws, data) => ws.send(`${ws.protocol}:${data}`) },
  })
  const refused = await wsRefused(`${base}/gql`)
  t.is(refused.status, 400, 'a client offering none is refused before the upgrade')
  t.is((await fetchUpgrade(base, '/gql', 'chat, superchat')).status, 400, 'none of those offered is spoken: 400')

  const client = await wsOpenWith(t, `${base}/gql`, ['mqtt', 'graphql-transport-ws'])
  t.is(client.client.protocol, 'graphql-transport-ws', "the route's preference wins")
  client.client.send('hi')
  t.true(await eventually(() => client.texts.length === 1))
  t.deepEqual(client.texts, ['graphql-transport-ws:hi'])
  const mqtt = await wsOpenWith(t, `${base}/gql`, ['mqtt'])
  t.is(mqtt.client.protocol, 'mqtt')
  t.true(await eventually(() => opened.length === 2))
  t.deepEqual(opened, ['graphql-transport-ws', 'mqtt'])
  t.is(server.stats().rejections.ws_bad_handshake, 2)
})

test('requireProtocol: false lets a client without a common subprotocol in, with ws.protocol empty', async (t) => {
  const opened = []
  const { base } = await startWs(t, { '/opt': { protocols: ['mqtt'], requireProtocol: false, open: (ws) => opened.push(ws.protocol) } })
  const none = await wsOpen(t, `${base}/opt`)
  t.is(none.client.protocol, '')
  // (the ws client fails a handshake that answers none of its offers; browsers do not)
  const other = await fetchUpgrade(base, '/opt', 'chat')
  t.is(other.status, 101)
  t.false(/sec-websocket-protocol/i.test(other.head))
  t.true(await eventually(() => opened.length === 2))
  t.deepEqual(opened, ['', ''])
})

test('a route without subprotocols ignores those offered and answers none', async (t) => {
  const { base } = await startWs(t, { '/plain': {} })
  const raw = await fetchUpgrade(base, '/plain', 'chat')
  t.is(raw.status, 101)
  t.false(/sec-websocket-protocol/i.test(raw.head))
})

test('selectProtocol(offered, req) chooses; a choice not offered is a 500, none a 400', async (t) => {
  const seen = []
  const { base } = await startWs(t, {
    '/pick': {
      selectProtocol(offered, req) {
        seen.push([offered, new URL(req.url).searchParams.get('want')])
        const want = new URL(req.url).searchParams.get('want')
        return want === 'none' ? undefined : want === 'other' ? 'not-offered' : offered.at(-1)
      },
      open: () => {},
    },
  })
  const c = await wsOpenWith(t, `${base}/pick?want=last`, ['a', 'b.v2'])
  t.is(c.client.protocol, 'b.v2')
  t.is((await fetchUpgrade(base, '/pick?want=none', 'a')).status, 400)
  t.is((await fetchUpgrade(base, '/pick?want=other', 'a')).status, 500)
  t.is((await fetchUpgrade(base, '/pick?want=last', '')).status, 400, 'nothing offered: refused before JS is asked')
  t.deepEqual(seen, [
    [['a', 'b.v2'], 'last'],
    [['a'], 'none'],
    [['a'], 'other'],
  ])
})

test('subprotocol options are checked: TypeErrors name the option', (t) => {
  const app = new StreamingApp()
  t.throws(() => app.ws('/a', { protocols: 'mqtt' }), { instanceOf: TypeError, message: /protocols must be an array/ })
  t.throws(() => app.ws('/b', { protocols: ['ok', 'not a token'] }), { instanceOf: TypeError, message: /protocols\[1\] must be a token/ })
  t.throws(() => app.ws('/c', { protocols: ['mqtt', 'mqtt'] }), { instanceOf: TypeError, message: /protocols lists "mqtt" twice/ })
  t.throws(() => app.ws('/d', { selectProtocol: 'mqtt' }), { instanceOf: TypeError, message: /selectProtocol must be a function/ })
  t.throws(() => app.ws('/e', { protocols: ['a'], selectProtocol: () => 'a' }), { instanceOf: TypeError, message: /not both/ })
  t.throws(() => app.ws('/f', { requireProtocol: 'yes' }), { instanceOf: TypeError, message: /requireProtocol/ })
})

needs(chromiumTool, test)('Chromium: new WebSocket(url, [protocols]) gets the route\'s choice', async (t) => {
  const app = new StreamingApp({ rateLimitRequests: 0 })
  const opened = []
  app.ws('/proto', { protocols: ['v2.floodgate', 'v1.floodgate'], open: (ws) => opened.push(ws.protocol), message: (ws, data) => ws.send(`${ws.protocol} ${data}`) })
  const { reported } = await openInChromium(
    t,
    app,
    `const ws = new WebSocket('ws://' + location.host + '/proto', ['v1.floodgate', 'v2.floodgate'])
    ws.onopen = () => ws.send('hello')
    ws.onmessage = (e) => fetch('/report', { method: 'POST', body: JSON.stringify({ protocol: ws.protocol, echo: e.data }) }).then(() => ws.close())
    ws.onerror = () => fetch('/report', { method: 'POST', body: JSON.stringify({ error: true }) })`,
  )
  const report = await eventually(reported, { timeout: 30_000 })
  t.deepEqual(report, { protocol: 'v2.floodgate', echo: 'v2.floodgate hello' })
  t.deepEqual(opened, ['v2.floodgate'])
})

/** A ws client offering `protocols`: resolves once open with { client, texts }. */
function wsOpenWith(t, url, protocols) {
  const client = new WebSocketClient(url, protocols, { perMessageDeflate: false })
  t.teardown(() => client.terminate())
  const state = { client, texts: [] }
  client.on('message', (data) => state.texts.push(data.toString()))
  return new Promise((resolve, reject) => {
    client.once('open', () => resolve(state))
    client.once('error', reject)
  })
}

/** An upgrade by hand offering `offered` in Sec-WebSocket-Protocol: resolves { status, head }. */
async function fetchUpgrade(base, path, offered) {
  const { port } = new URL(base)
  const raw = await rawWebSocket(Number(port), `/ws${path}`, { headers: offered ? `Sec-WebSocket-Protocol: ${offered}\r\n` : '' })
  raw.socket.destroy()
  return raw
}

// permessage-deflate (RFC 7692): `compression` on the route, off by default.

const jsonLike = (i) => JSON.stringify({ id: i, type: 'update', user: `user-${i % 17}`, items: Array.from({ length: 12 }, (_, k) => ({ k, price: 100 + k, name: `item ${k}` })) })

test('compression: the ws client with perMessageDeflate round-trips text and binary, both ways compressed', async (t) => {
  const { base, server } = await startWs(t, { '/z': { compression: true, message: (ws, data) => ws.send(data) } }, { wsMaxMessagesPerSecond: 0 })
  const client = new WebSocketClient(`${base}/z`, { perMessageDeflate: { threshold: 0 } })
  t.teardown(() => client.terminate())
  const received = []
  client.on('message', (data, isBinary) => received.push(isBinary ? Buffer.from(data) : data.toString()))
  await new Promise((resolve, reject) => client.once('open', resolve).once('error', reject))
  t.regex(client.extensions, /permessage-deflate/)
  const messages = [jsonLike(1), 'short', '', Buffer.alloc(50_000, 3), jsonLike(2), 'ünïcödé ✓ '.repeat(100)]
  for (const message of messages) client.send(message)
  t.true(await eventually(() => received.length === messages.length))
  t.deepEqual(received, messages)
  // 1 KiB JSON-like messages shrink on the wire (both directions counted by the server).
  const stats = server.stats()
  const payload = messages.reduce((sum, m) => sum + Buffer.byteLength(m), 0)
  t.true(stats.bytesSent < payload / 2, `${stats.bytesSent} bytes out for ${payload} bytes of messages`)
})

test('compression off (the default), or a client that offers none: no extension, plain frames', async (t) => {
  const { base } = await startWs(t, { '/plain': { message: (ws, data) => ws.send(data) }, '/z': { compression: true, message: (ws, data) => ws.send(data) } })
  for (const [path, offer] of [
    ['/plain', true],
    ['/z', false],
  ]) {
    const client = new WebSocketClient(`${base}${path}`, { perMessageDeflate: offer })
    t.teardown(() => client.terminate())
    await new Promise((resolve, reject) => client.once('open', resolve).once('error', reject))
    t.is(client.extensions, '', `${path}, offered: ${offer}`)
    const echoed = new Promise((resolve) => client.once('message', (data) => resolve(data.toString())))
    client.send(jsonLike(3))
    t.is(await echoed, jsonLike(3))
  }
})

test('compression: the negotiated settings are answered, and the frame on the wire inflates to the message', async (t) => {
  const { port } = await startWs(t, { '/z': { compression: { serverMaxWindowBits: 10, threshold: 16 }, message: (ws, data) => ws.send(data) } })
  const raw = await rawWebSocket(port, '/ws/z', { headers: 'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n' })
  t.regex(raw.head, /sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10/i)
  const text = jsonLike(4)
  raw.socket.write(wsFrame(0x1, text))
  raw.socket.write(wsFrame(0x1, 'tiny'))
  t.true(await eventually(() => raw.frames.length === 2))
  const { inflateRawSync, constants } = await import('node:zlib')
  const [big, tiny] = raw.frames
  t.true(big.payload.length < text.length / 2)
  t.is(inflateRawSync(Buffer.concat([big.payload, Buffer.from([0, 0, 0xff, 0xff])]), { finishFlush: constants.Z_SYNC_FLUSH }).toString(), text)
  t.is(tiny.payload.toString(), 'tiny', 'under the threshold: sent as is')
  raw.socket.destroy()
})

test('compression: a small frame that inflates past wsMaxMessageSize is closed 1009 while inflating', async (t) => {
  const { deflateRawSync, constants } = await import('node:zlib')
  const got = []
  const { port, server } = await startWs(t, { '/z': { compression: true, message: (ws, data) => got.push(data.length) } }, { wsMaxMessageSize: '1mb' })
  // 64 MiB of zeros deflate to ~64 KiB: one frame, well under the limit on the wire.
  const bomb = deflateRawSync(Buffer.alloc(64 << 20), { finishFlush: constants.Z_SYNC_FLUSH }).subarray(0, -4)
  t.true(bomb.length < 100 * 1024)
  const compressed = (payload) => {
    const frame = wsFrame(0x2, payload)
    frame[0] |= 0x40 // RSV1: compressed
    return frame
  }
  const raw = await rawWebSocket(port, '/ws/z', { headers: 'Sec-WebSocket-Extensions: permessage-deflate\r\n' })
  const ok = deflateRawSync(Buffer.alloc(1000, 7), { finishFlush: constants.Z_SYNC_FLUSH }).subarray(0, -4)
  const sent = Date.now()
  raw.socket.write(Buffer.concat([compressed(ok), compressed(bomb)]))
  await closedWithin(raw)
  const close = raw.frames.find((frame) => frame.opcode === 8)
  t.is(close.payload.readUInt16BE(0), 1009)
  t.true(close.at - sent < 3000, `closed ${close.at - sent} ms after the frame`)
  t.true(await eventually(() => got.length === 1))
  t.deepEqual(got, [1000], 'the message before it arrived whole; the bomb never reached JS')
  t.is(server.stats().rejections.ws_message_too_large, 1)
  // RSV1 on a route without compression is a protocol error.
  const { port: plainPort } = await startWs(t, { '/p': {} })
  const plain = await rawWebSocket(plainPort, '/ws/p', { headers: 'Sec-WebSocket-Extensions: permessage-deflate\r\n' })
  t.false(/sec-websocket-extensions/i.test(plain.head))
  plain.socket.write(compressed(ok))
  await closedWithin(plain)
  t.is(plain.frames.find((frame) => frame.opcode === 8).payload.readUInt16BE(0), 1002)
})

test('compression options are checked: TypeErrors name the option', (t) => {
  const app = new StreamingApp()
  t.throws(() => app.ws('/a', { compression: 'yes' }), { instanceOf: TypeError, message: /compression must be true, false or an object/ })
  t.throws(() => app.ws('/b', { compression: { level: 9 } }), { instanceOf: TypeError, message: /compression\.level is not an option/ })
  t.throws(() => app.ws('/c', { compression: { serverMaxWindowBits: 8 } }), { instanceOf: TypeError, message: /compression\.serverMaxWindowBits must be an integer from 9 to 15/ })
  t.throws(() => app.ws('/d', { compression: { clientNoContextTakeover: 1 } }), { instanceOf: TypeError, message: /compression\.clientNoContextTakeover must be a boolean/ })
  t.notThrows(() => app.ws('/e', { compression: { serverNoContextTakeover: false, threshold: '1kb' } }))
})

needs(chromiumTool, test)('Chromium negotiates permessage-deflate and round-trips compressed messages', async (t) => {
  const app = new StreamingApp({ rateLimitRequests: 0 })
  app.ws('/z', { compression: true, message: (ws, data) => ws.send(data) })
  const text = jsonLike(5)
  const { reported } = await openInChromium(
    t,
    app,
    `const ws = new WebSocket('ws://' + location.host + '/z')
    const text = ${JSON.stringify(text)}
    ws.onopen = () => ws.send(text)
    ws.onmessage = (e) => fetch('/report', { method: 'POST', body: JSON.stringify({ extensions: ws.extensions, same: e.data === text }) }).then(() => ws.close())
    ws.onerror = () => fetch('/report', { method: 'POST', body: JSON.stringify({ error: true }) })`,
  )
  const report = await eventually(reported, { timeout: 30_000 })
  t.true(report.same, 'the echo came back intact')
  t.regex(report.extensions, /permessage-deflate/)
})

test('compression: a published event reaches compressing and plain subscribers intact', async (t) => {
  let subscribed = 0
  const open = (ws) => ws.subscribe('prices.>') && subscribed++
  const { base, server } = await startWs(t, {
    '/z': { compression: true, open },
    '/own': { compression: { serverNoContextTakeover: false }, open },
    '/plain': { open },
  })
  const clients = []
  for (const [path, deflate] of [
    ['/z', true],
    ['/z', true],
    ['/own', true],
    ['/plain', true],
    ['/z', false],
  ]) {
    const client = new WebSocketClient(`${base}${path}`, { perMessageDeflate: deflate })
    t.teardown(() => client.terminate())
    const state = { client, texts: [] }
    client.on('message', (data) => state.texts.push(data.toString()))
    await new Promise((resolve, reject) => client.once('open', resolve).once('error', reject))
    clients.push(state)
  }
  t.true(await eventually(() => subscribed === 5))
  const events = [jsonLike(6), 'small', jsonLike(7)]
  for (const event of events) t.is(server.publish('prices.eur', event), 5)
  t.true(await eventually(() => clients.every((c) => c.texts.length === events.length)))
  for (const c of clients) t.deepEqual(c.texts, events)
})
