// floodgate for the `defences` workload (issue 20): WebSocket echo and sink routes with and
// without Rust-side message validation, and a JS route behind the accept checks.
//   /ws/echo, /ws/echo-schema         echo; the second checks each message against SCHEMA first
//   /ws/sink, /ws/sink-validated      the application checks each message in JS (parse, look at
//                                     its type); the second has Rust drop invalid ones first
//   /api/hello                        a small JS answer
// MAX_PER_IP sets maxConnectionsPerIp; BAN=1 turns bans on.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { Server, StreamingApp } = require('../../index.js')

export const SCHEMA = {
  type: 'object',
  required: ['type', 'room', 'text'],
  properties: { type: { enum: ['chat', 'typing'] }, room: { type: 'string', maxLength: 64 }, text: { type: 'string', maxLength: 512 } },
  additionalProperties: false,
}

const server = new Server({
  maxConnectionsPerIp: Number(process.env.MAX_PER_IP ?? 0),
  ...(process.env.BAN === '1' && { ban: { after: 20, within: '10s', for: '5m' } }),
})
const app = new StreamingApp({
  rateLimitRequests: 0,
  rateLimitBandwidth: 0,
  wsMaxMessagesPerSecond: 0,
  wsMaxConnectionsPerUser: 100_000,
  wsMaxConnectionsPerIp: 100_000,
  wsMaxConnections: 50_000,
  wsIdleTimeout: 0,
})
const echo = (ws, data) => ws.send(data)
let accepted = 0
const check = (_ws, data) => {
  let message
  try {
    message = JSON.parse(data)
  } catch {
    return
  }
  if (message?.type === 'chat' && typeof message.text === 'string') accepted++
}
app.ws('/echo', { message: echo })
app.ws('/echo-schema', { messages: { schema: SCHEMA }, message: echo })
app.ws('/sink', { message: check })
app.ws('/sink-validated', { messages: { schema: SCHEMA, maxInvalid: 0 }, message: check })
server.mount('/ws', app)
server.mount('/api/hello', () => new Response(`hi ${accepted}`))
const { port } = await server.listen({ port: 0, host: '127.0.0.1' })
console.log(`READY ${port}`)
process.on('SIGTERM', () => server.close({ drain: 0 }).then(() => process.exit(0)))
