// Fastify + @fastify/static serving ROOT at /stream/files/.
import Fastify from 'fastify'
import fastifyStatic from '@fastify/static'

const app = Fastify({ logger: false })
await app.register(fastifyStatic, { root: process.env.ROOT, prefix: '/stream/files/' })
app.get('/api/json', async () => ({ hello: 'world' }))
await app.listen({ port: 0, host: '127.0.0.1' })
console.log(`READY ${app.server.address().port}`)
process.on('SIGTERM', () => process.exit(0))
