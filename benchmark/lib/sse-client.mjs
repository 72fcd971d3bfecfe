// A lean SSE load client, run as its own process: N raw sockets subscribe, every received
// event's publish timestamp gives a delivery latency. Prints one JSON line with the results.
import net from 'node:net'

const [port, count, path, waitMs] = process.argv.slice(2).map((v, i) => (i === 2 ? v : Number(v)))
const latencies = []
let delivered = 0
let connected = 0
const sockets = []

function open() {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n`)
    })
    let buffer = ''
    let ready = false
    socket.setEncoding('utf8')
    socket.on('data', (chunk) => {
      const now = performance.timeOrigin + performance.now()
      if (!ready) {
        ready = true
        connected++
        resolve()
      }
      buffer += chunk
      let at
      while ((at = buffer.indexOf('"t":')) >= 0) {
        const end = buffer.indexOf('}', at)
        if (end < 0) break
        latencies.push(now - Number(buffer.slice(at + 4, end)))
        delivered++
        buffer = buffer.slice(end + 1)
      }
      if (buffer.length > 4096) buffer = buffer.slice(-64)
    })
    socket.on('error', () => resolve())
    // A server that never answers must not hang the run.
    setTimeout(resolve, 10_000).unref()
    sockets.push(socket)
  })
}

for (let i = 0; i < count; i += 200) {
  await Promise.all(Array.from({ length: Math.min(200, count - i) }, open))
}
process.stdout.write(`CONNECTED ${connected}\n`)
await new Promise((resolve) => setTimeout(resolve, waitMs))
latencies.sort((a, b) => a - b)
const pick = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? null
process.stdout.write(`${JSON.stringify({ connected, delivered, p50: pick(0.5), p99: pick(0.99) })}\n`)
for (const socket of sockets) socket.destroy()
process.exit(0)
