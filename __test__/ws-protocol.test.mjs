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
