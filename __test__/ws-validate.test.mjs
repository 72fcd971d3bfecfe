// Messages validated in Rust before JS (`messages` on a WebSocket route): valid JSON within the
// route's bounds and schema reaches JS unchanged; anything else never does, is counted, and
// closes the socket with 1007 under the route's policy (a strike toward a ban).
import test from 'ava'
import { StreamingApp, eventually, sleep, startWs, wsOpen } from './helpers.mjs'

const schema = {
  type: 'object',
  required: ['type'],
  properties: { type: { enum: ['chat', 'typing'] }, text: { type: 'string' } },
}

test('valid messages reach JS unchanged; bad JSON, too deep, too many keys, a long string or the wrong type never do', async (t) => {
  const heard = []
  const { server, base } = await startWs(t, {
    '/chat': {
      messages: { schema, maxDepth: 3, maxKeys: 4, maxStringLength: 20, maxInvalid: 0 },
      message: (ws, data, isBinary) => {
        heard.push(String(data))
        ws.send(data, isBinary)
      },
    },
  })
  const socket = await wsOpen(t, `${base}/chat`)
  const valid = ['{"type":"chat","text":"hello"}', '{ "type": "typing" }', '{"type":"chat","extra":[[1]]}']
  const invalid = [
    '{"type":"chat"', // not JSON
    'hello', // not JSON
    '{"type":"chat","extra":[[[1]]]}', // too deep
    '{"type":"chat","a":1,"b":2,"c":3,"d":4}', // too many keys
    '{"type":"chat","text":"a string longer than twenty characters"}', // too long
    '{"type":"shout"}', // the schema's enum
    '{"text":"no type"}', // the schema's required
    '[1,2,3]', // the schema's type
  ]
  for (const message of [...invalid.slice(0, 4), valid[0], ...invalid.slice(4), valid[1]]) socket.client.send(message)
  socket.client.send(Buffer.from(valid[2])) // binary holding JSON
  await eventually(() => socket.messages.length === 3)
  t.deepEqual(heard, valid)
  t.deepEqual(socket.messages.map((m) => String(m.data)), valid)
  t.is(server.stats().rejections.ws_invalid_message, invalid.length)
  t.is(socket.closed, undefined, 'maxInvalid 0: never closed for it')
})

test('past maxInvalid the socket is closed with 1007; onInvalid close closes at the first', async (t) => {
  const heard = []
  const { server, base } = await startWs(t, {
    '/lenient': { messages: { maxInvalid: 3 }, message: (_ws, data) => heard.push(String(data)) },
    '/strict': { messages: { onInvalid: 'close' }, message: (_ws, data) => heard.push(String(data)) },
  })
  const lenient = await wsOpen(t, `${base}/lenient`)
  for (let i = 0; i < 3; i++) lenient.client.send('not json')
  lenient.client.send('{"ok":1}')
  await eventually(() => heard.length === 1)
  t.is(lenient.closed, undefined)
  lenient.client.send('not json') // the fourth: more than 3
  const closed = await lenient.closing
  t.is(closed.code, 1007)
  t.is(closed.reason, 'Invalid message')
  const strict = await wsOpen(t, `${base}/strict`)
  strict.client.send('{"ok":2}')
  strict.client.send('{')
  strict.client.send('{"ok":3}') // after the close: never heard
  t.is((await strict.closing).code, 1007)
  await sleep(100)
  t.deepEqual(heard, ['{"ok":1}', '{"ok":2}'])
  t.is(server.stats().rejections.ws_invalid_message, 5)
})

test('a telemetry route checks each message of a batch', async (t) => {
  const batches = []
  const { base } = await startWs(t, {
    '/telemetry': { telemetry: true, messages: { schema: { type: 'object', required: ['metric'] }, maxInvalid: 0 }, batch: (messages) => batches.push(messages.map((m) => String(m.data))) },
  })
  const socket = await wsOpen(t, `${base}/telemetry`)
  for (let i = 0; i < 50; i++) socket.client.send(i % 2 ? `{"metric":${i}}` : `{"other":${i}}`)
  await eventually(() => batches.flat().length === 25)
  await sleep(100)
  t.deepEqual(batches.flat(), Array.from({ length: 25 }, (_, k) => `{"metric":${2 * k + 1}}`))
})

test('a socket closed for invalid messages is a strike toward a ban', async (t) => {
  const { server, base } = await startWs(t, { '/strict': { messages: { onInvalid: 'close' }, message: () => {} } }, {}, { ban: { after: 2, for: '1m' } })
  for (let i = 0; i < 2; i++) {
    const socket = await wsOpen(t, `${base}/strict`, { localAddress: '127.0.0.31' })
    socket.client.send('garbage')
    t.is((await socket.closing).code, 1007)
  }
  t.deepEqual(server.bans().map((ban) => ban.client), ['127.0.0.31'])
  await t.throwsAsync(wsOpen(t, `${base}/strict`, { localAddress: '127.0.0.31' }))
  const other = await wsOpen(t, `${base}/strict`, { localAddress: '127.0.0.32' })
  t.is(other.closed, undefined)
})

test('messages options are checked: TypeErrors naming the option', async (t) => {
  const app = new StreamingApp()
  for (const [messages, name] of [
    [{ schema: { type: 'no such type' } }, 'messages.schema'],
    [{ maxDepth: 0 }, 'messages.maxDepth'],
    [{ maxDepth: 500 }, 'messages.maxDepth'],
    [{ maxKeys: 0 }, 'messages.maxKeys'],
    [{ format: 'xml' }, 'messages.format'],
    [{ onInvalid: 'ignore' }, 'messages.onInvalid'],
  ]) {
    const error = t.throws(() => app.ws('/x', { messages }), { instanceOf: TypeError }, JSON.stringify(messages))
    t.true(error.message.includes(name), error.message)
  }
})

test('compressed messages are checked once inflated', async (t) => {
  const heard = []
  const { server, base } = await startWs(t, {
    '/deflate': { compression: true, messages: { schema: { type: 'object', required: ['type'] }, maxInvalid: 0 }, message: (ws, data) => heard.push(String(data)) },
  })
  const socket = await wsOpen(t, `${base}/deflate`, { perMessageDeflate: { threshold: 0 } })
  t.truthy(socket.client.extensions.includes('permessage-deflate'), socket.client.extensions)
  const valid = JSON.stringify({ type: 'chat', text: 'x'.repeat(2000) })
  socket.client.send(JSON.stringify({ kind: 'no type', text: 'y'.repeat(2000) }))
  socket.client.send('not json '.repeat(200))
  socket.client.send(valid)
  await eventually(() => heard.length === 1)
  t.deepEqual(heard, [valid])
  t.is(server.stats().rejections.ws_invalid_message, 2)
})
