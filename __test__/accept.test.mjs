// The accept loop under descriptor exhaustion: a server process started with a small
// RLIMIT_NOFILE runs out of file descriptors; `accept` failing with EMFILE is counted
// (`out_of_files`) and backed off, and the server serves again once connections close.
import test from 'ava'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { connect, eventually, onPlatforms, readyPort, sleep } from './helpers.mjs'

const script = `
const { Server, StreamingApp } = require(${JSON.stringify(fileURLToPath(new URL('../index.js', import.meta.url)))})
const server = new Server({ maxConnectionsPerIp: 0 })
server.mount('/stats', () => Response.json(server.stats()))
server.listen({ port: 0 }).then(({ port }) => console.log('READY ' + port))
`

/** Starts the script under `ulimit -n <files>` (sh's builtin), resolving its port. */
async function limitedServer(t, files) {
  const child = spawn('sh', ['-c', `ulimit -n ${files} && exec "$0" -e "$1"`, process.execPath, script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  t.teardown(() => child.kill('SIGKILL'))
  return readyPort(child)
}

const posixTest = onPlatforms(['linux', 'darwin', 'freebsd'], 'RLIMIT_NOFILE and `ulimit` are POSIX', test)

posixTest('EMFILE at accept is counted as out_of_files and backed off; the server recovers', async (t) => {
  const port = await limitedServer(t, 128)
  // More idle connections than the process has descriptors: the kernel queues the rest in the
  // listen backlog while accept fails.
  const sockets = []
  for (let i = 0; i < 200; i++) {
    const socket = await connect(port)
    socket.on('error', () => {})
    sockets.push(socket)
  }
  await sleep(500)
  for (const socket of sockets) socket.destroy()
  // Once they are gone, the server accepts (and answers) again.
  const stats = await eventually(
    async () => {
      const response = await fetch(`http://127.0.0.1:${port}/stats`).catch(() => null)
      return response?.ok ? response.json() : null
    },
    { timeout: 20_000, interval: 200 },
  )
  t.true(stats.rejections.out_of_files > 0, `out_of_files ${stats.rejections.out_of_files}`)
})
