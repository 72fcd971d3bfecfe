// `overrideGlobalResponse: false` leaves globalThis.Response alone (a file of its own: the
// override is process-wide, and ava runs each file in a process of its own).
import test from 'ava'
import { Server, floodgate, request } from './helpers.mjs'

const RealResponse = globalThis.Response

test('overrideGlobalResponse: false keeps the real class; FastResponse is still sent light', async (t) => {
  const server = new Server({ overrideGlobalResponse: false })
  t.is(globalThis.Response, RealResponse)
  server.mount('/api', (req) =>
    new URL(req.url).pathname === '/fast' ? floodgate.FastResponse.json({ fast: true }) : Response.json({ fast: false }),
  )
  const { url } = await server.listen({ port: 0 })
  t.teardown(() => server.close({ drain: 0 }))
  t.deepEqual(JSON.parse((await request(`${url}/api/fast`)).body.toString()), { fast: true })
  t.deepEqual(JSON.parse((await request(`${url}/api/real`)).body.toString()), { fast: false })
  t.is(globalThis.Response, RealResponse)
})

test('overrideGlobalResponse must be a boolean', (t) => {
  t.throws(() => new Server({ overrideGlobalResponse: 'yes' }), { instanceOf: TypeError, message: /overrideGlobalResponse/ })
})
