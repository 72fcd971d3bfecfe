// `identify` as the README shows it: the user comes from a token the application verifies, so a
// client rotating names it cannot prove gets no fresh limit per name.
import test from 'ava'
import { createHmac, timingSafeEqual } from 'node:crypto'
import { Server, StreamingApp } from './helpers.mjs'

const SECRET = 'test-secret'
const sign = (user) => `${user}.${createHmac('sha256', SECRET).update(user).digest('base64url')}`

function verifiedUser(req) {
  const [user, signature] = (req.headers.get('authorization') ?? '').replace(/^Bearer /, '').split('.')
  if (!user || !signature) return undefined
  const expected = createHmac('sha256', SECRET).update(user).digest('base64url')
  const ok = signature.length === expected.length && timingSafeEqual(Buffer.from(signature), Buffer.from(expected))
  return ok ? user : undefined
}

test('identify from a verified token: rotating unverified names shares the address limit; real users have their own', async (t) => {
  const server = new Server()
  const app = new StreamingApp({ rateLimitRequests: 5, rateLimitWindow: '1m', identify: verifiedUser })
  app.get('/x', () => 'ok')
  server.mount('/', app)
  const { url } = await server.listen({ port: 0 })
  t.teardown(() => server.close({ drain: 0 }))

  const statuses = []
  for (let i = 0; i < 20; i++) {
    // A forged token per request: each names another user, none verifies.
    const response = await fetch(`${url}/x`, { headers: { authorization: `Bearer user${i}.forged` } })
    statuses.push(response.status)
  }
  t.deepEqual(statuses.slice(0, 5), [200, 200, 200, 200, 200])
  t.true(statuses.slice(5).every((status) => status === 429), statuses.join(' '))

  // Verified users are limited each on their own, from the same (exhausted) address.
  for (const user of ['ada', 'bob']) {
    const response = await fetch(`${url}/x`, { headers: { authorization: `Bearer ${sign(user)}` } })
    t.is(response.status, 200, user)
  }
})
