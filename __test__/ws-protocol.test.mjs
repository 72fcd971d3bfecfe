// WebSockets as the protocol says (issue 17): replies to valid messages go out before the close
// frame that refuses the input behind them; text fails at the fragment where it stops being
// UTF-8; close codes outside the allowed ranges get 1002. Raw sockets, so each frame is exact.
import test from 'ava'
import { startWs, rawWebSocket, wsFrame, closedWithin, eventually } from './helpers.mjs'

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
