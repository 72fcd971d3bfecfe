// The light `Response` (response.ts): it replaces globalThis.Response once a Server exists, and
// must behave as undici's class in everything a program can observe — properties, headers,
// bodies, errors, instanceof — while floodgate sends it without building the real one.
import test from 'ava'
import { Hono } from 'hono'
import { Server, floodgate, request } from './helpers.mjs'

const RealResponse = globalThis.Response
const { FastResponse } = floodgate
// Installs the light class as the global (the default).
new Server()

async function serve(t, handler) {
  const server = new Server()
  const errors = []
  server.on('error', (error) => errors.push(error))
  server.mount('/api', handler)
  const { url } = await server.listen({ port: 0 })
  t.teardown(() => server.close({ drain: 0 }))
  return { url, errors }
}

/** What a program can see of a response, to compare the light class with the real one. */
async function observed(response) {
  return {
    status: response.status,
    ok: response.ok,
    statusText: response.statusText,
    type: response.type,
    url: response.url,
    redirected: response.redirected,
    headers: [...response.headers],
    body: await response.text(),
    bodyUsed: response.bodyUsed,
  }
}

test('a Server makes the light class the global Response; instanceof holds both ways', async (t) => {
  t.is(globalThis.Response, FastResponse)
  t.is(Response.name, 'Response')
  const light = new Response('x')
  t.true(light instanceof Response)
  t.true(light instanceof RealResponse)
  t.true(new RealResponse('x') instanceof Response)
  t.true((await fetch('data:,hello')) instanceof Response)
  t.is(Object.prototype.toString.call(light), '[object Response]')
  class Subclass extends Response {}
  t.true(new Subclass('s') instanceof Subclass)
  t.true(new Subclass('s') instanceof Response)
  t.false(light instanceof Subclass)
  t.is(await new Subclass('sub').text(), 'sub')
  t.is(Response.error().type, 'error')
  t.is(Response.redirect('http://example.com/', 302).headers.get('location'), 'http://example.com/')
})

test('light responses show what real ones show', async (t) => {
  const streamed = () => new ReadableStream({ start: (c) => (c.enqueue(new TextEncoder().encode('streamed')), c.close()) })
  // Each case makes its arguments anew: a body can be read once.
  const cases = {
    text: () => ['hello'],
    'text with status and headers': () => ['made', { status: 201, headers: { 'X-Kind': ' spaced ', 'content-type': 'text/x' } }],
    bytes: () => [new Uint8Array([104, 105])],
    Buffer: () => [Buffer.from('buf')],
    'no body': () => [null, { status: 204 }],
    'undefined body': () => [undefined],
    'Headers init': () => ['h', { headers: new Headers([['b', '2'], ['a', '1'], ['set-cookie', 'x=1'], ['set-cookie', 'y=2']]) }],
    'case duplicates': () => ['d', { headers: { 'X-A': '1', 'x-a': '2' } }],
    'array init': () => ['a', { headers: [['x-list', '1'], ['x-list', '2']] }],
    'status text': () => ['st', { status: 299, statusText: 'Fine' }],
    'fractional status': () => ['f', { status: 200.5 }],
    'stream body': () => [streamed()],
    'Blob body': () => [new Blob(['blob'], { type: 'text/blob' })],
    'URLSearchParams body': () => [new URLSearchParams({ a: '1' })],
  }
  for (const [name, make] of Object.entries(cases)) {
    t.deepEqual(await observed(new Response(...make())), await observed(new RealResponse(...make())), name)
  }
  t.deepEqual(await observed(Response.json({ a: [1, 'b'] })), await observed(RealResponse.json({ a: [1, 'b'] })))
  const init = { status: 202, headers: { 'Content-Type': 'application/vnd.api+json' } }
  t.deepEqual(await observed(Response.json({ a: 1 }, init)), await observed(RealResponse.json({ a: 1 }, init)))
  const clone = new Response('twice').clone()
  t.is(await clone.text(), 'twice')
  t.deepEqual(await new Response('{"j":1}').json(), { j: 1 })
  t.deepEqual(new Uint8Array(await new Response('ab').arrayBuffer()), new Uint8Array([97, 98]))
})

test('bad arguments throw what the real class throws, where it throws it', (t) => {
  const bad = [
    ['x', { status: 204 }],
    ['x', { status: 99 }],
    ['x', { status: 600 }],
    ['x', { headers: { 'bad name': 'v' } }],
    ['x', { headers: { 'x-a': 'line\r\nbreak' } }],
    ['x', { headers: { 'x-a': 'é€' } }],
    ['x', { statusText: 'bad\nline' }],
    ['x', 'not an init'],
  ]
  for (const [body, init] of bad) {
    const real = t.throws(() => new RealResponse(body, init))
    const light = t.throws(() => new Response(body, init))
    t.is(light.constructor, real.constructor, JSON.stringify(init))
    t.is(light.message, real.message, JSON.stringify(init))
  }
  t.throws(() => Response.json(undefined), { instanceOf: TypeError })
  t.throws(() => Response.json(() => 1), { instanceOf: TypeError })
  t.throws(() => Response.json({ n: 1n }), { instanceOf: TypeError })
  t.throws(() => Response.json({}, { status: 204 }), { instanceOf: TypeError })
})

test('the body is copied when the response is made, as the real class does', async (t) => {
  const bytes = new Uint8Array([1, 2, 3])
  const response = new Response(bytes)
  bytes[0] = 9
  t.deepEqual(new Uint8Array(await response.arrayBuffer()), new Uint8Array([1, 2, 3]))
})

test('floodgate sends light responses as they are, and real or changed ones from their state', async (t) => {
  const bytes = new Uint8Array([1, 2, 3])
  const { url, errors } = await serve(t, (req) => {
    const path = new URL(req.url).pathname
    if (path === '/json') return Response.json({ light: true }, { status: 201, headers: { 'X-Id': '7' } })
    if (path === '/text') return new Response('plain')
    if (path === '/bytes') {
      const response = new Response(bytes)
      bytes[0] = 9 // after construction: not sent
      return response
    }
    if (path === '/empty') return new Response(null, { status: 204, headers: { 'x-empty': '1' } })
    if (path === '/cookies') {
      return new Response('c', { headers: new Headers([['set-cookie', 'a=1'], ['set-cookie', 'b=2']]) })
    }
    if (path === '/changed') {
      const response = new Response('changed', { headers: { 'x-first': '1' } })
      response.headers.set('x-late', '2') // builds the real response; its headers are sent
      return response
    }
    if (path === '/real') return new RealResponse('real', { status: 202, headers: { 'x-real': '1' } })
    return new Response('not found', { status: 404 })
  })
  const json = await request(`${url}/api/json`)
  t.is(json.status, 201)
  t.is(json.headers['content-type'], 'application/json')
  t.is(json.headers['x-id'], '7')
  t.deepEqual(JSON.parse(json.body.toString()), { light: true })
  const text = await request(`${url}/api/text`)
  t.is(text.headers['content-type'], 'text/plain;charset=UTF-8')
  t.is(text.headers['content-length'], '5')
  t.is(text.body.toString(), 'plain')
  const bin = await fetch(`${url}/api/bytes`)
  t.deepEqual(new Uint8Array(await bin.arrayBuffer()), new Uint8Array([1, 2, 3]))
  t.is(bin.headers.get('content-type'), null)
  const empty = await request(`${url}/api/empty`)
  t.is(empty.status, 204)
  t.is(empty.headers['x-empty'], '1')
  t.deepEqual((await request(`${url}/api/cookies`)).headers['set-cookie'], ['a=1', 'b=2'])
  const changed = await request(`${url}/api/changed`)
  t.like(changed.headers, { 'x-first': '1', 'x-late': '2' })
  t.is(changed.body.toString(), 'changed')
  const real = await request(`${url}/api/real`)
  t.is(real.status, 202)
  t.is(real.headers['x-real'], '1')
  t.is(real.body.toString(), 'real')
  t.deepEqual(errors, [])
})

test('a Hono app answers through the light class, headers set in middleware included', async (t) => {
  const app = new Hono()
  app.use(async (c, next) => {
    await next()
    c.header('x-after', 'yes')
  })
  app.get('/hello', (c) => c.json({ hello: 'hono' }))
  app.get('/headed', (c) => {
    c.header('x-before', 'set')
    return c.text('with headers', 202)
  })
  const { url } = await serve(t, app)
  const hello = await request(`${url}/api/hello`)
  t.is(hello.status, 200)
  t.is(hello.headers['content-type'], 'application/json')
  t.is(hello.headers['x-after'], 'yes')
  t.deepEqual(JSON.parse(hello.body.toString()), { hello: 'hono' })
  const headed = await request(`${url}/api/headed`)
  t.is(headed.status, 202)
  t.like(headed.headers, { 'x-before': 'set', 'x-after': 'yes' })
  t.is(headed.body.toString(), 'with headers')
})
