// Fastify + @fastify/static serving ROOT at /stream/files/; @fastify/multipart (busboy) storing
// forms POSTed to /stream/form in UPLOAD_DIR, hashed as they are written (as floodgate does).
import Fastify from 'fastify'
import fastifyStatic from '@fastify/static'
import fastifyMultipart from '@fastify/multipart'
import { createHash } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { basename, join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { Transform } from 'node:stream'

const app = Fastify({ logger: false })
await app.register(fastifyStatic, { root: process.env.ROOT, prefix: '/stream/files/' })
app.get('/api/json', async () => ({ hello: 'world' }))
await app.register(fastifyMultipart, { limits: { files: 2000, parts: 4000, fileSize: 2 * 1024 ** 3 } })
app.post('/stream/form', async (req, reply) => {
  const files = []
  for await (const part of req.parts()) {
    if (part.type !== 'file') continue
    const name = basename(part.filename)
    const hash = createHash('sha256')
    let size = 0
    const tap = new Transform({
      transform(chunk, _encoding, done) {
        hash.update(chunk)
        size += chunk.length
        done(null, chunk)
      },
    })
    await pipeline(part.file, tap, createWriteStream(join(process.env.UPLOAD_DIR, name)))
    files.push({ field: part.fieldname, name, size, sha256: hash.digest('hex') })
  }
  return reply.code(201).send({ files })
})
await app.listen({ port: 0, host: '127.0.0.1' })
console.log(`READY ${app.server.address().port}`)
process.on('SIGTERM', () => process.exit(0))
