/**
 * `npm start`: a floodgate server with a protected files mount over a sample folder.
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Server, StreamingApp } from '../index'

const root = join(__dirname, 'sample')
mkdirSync(root, { recursive: true })
writeFileSync(join(root, 'hello.txt'), 'Hello from floodgate!\n')
writeFileSync(join(root, 'big.bin'), Buffer.alloc(32 * 1024 * 1024, 7))
writeFileSync(join(root, '.secret'), 'dotfiles are never served\n')

async function main() {
  const server = new Server({ maxConnectionsPerIp: 20, headerTimeout: '10s' })
  const streaming = new StreamingApp({ rateLimitBandwidth: '2mb', downloadTimeout: '2m' })
  streaming.files('/files', { root })
  server.mount('/stream', streaming)
  const { url } = await server.listen({ port: Number(process.env.PORT ?? 8080), host: '127.0.0.1' })
  const stop = () => server.close({ drain: 5_000 }).then(() => process.exit(0))
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
  const files = `${url}/stream/files`
  console.log(`floodgate demo listening on ${url}

Try:
  curl -i ${files}/hello.txt                       # the file, with ETag and Last-Modified
  curl -i -H 'Range: bytes=0-4' ${files}/hello.txt  # 206 Partial Content
  curl -o /dev/null -w '%{speed_download} B/s\\n' ${files}/big.bin   # shaped to 2 MiB/s
  curl -i --path-as-is ${files}/../../etc/passwd    # 404: never outside the root
  curl -i ${files}/.secret                          # 404: dotfiles are not served

Ctrl-C stops it (in-flight downloads get 5 s to finish).`)
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
