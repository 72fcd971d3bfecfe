// The publishing side of the SSE fan-out workload, the same for every server. With `size`, each
// event is JSON-like text of at least that many bytes (records whose numbers change with each
// event, as a price feed's would), for the compression workloads.
exports.publishFor = (rate, seconds, publish, size = 0) => {
  let sent = 0
  const total = rate * seconds
  const timer = setInterval(() => {
    const t = performance.timeOrigin + performance.now()
    publish(size > 0 ? event(sent, t, size) : JSON.stringify({ n: sent, t }))
    if (++sent >= total) clearInterval(timer)
  }, 1000 / rate)
}

function event(n, t, size) {
  const items = []
  let length = 40
  for (let i = 0; length < size - 60; i++) {
    const item = { id: 1000 + i, symbol: `SYM${(i * 7) % 97}`, bid: 100 + ((n + i * 13) % 4100) / 100, ask: 101 + ((n + i * 13) % 4100) / 100, volume: (n * 31 + i * 7919) % 100000 }
    items.push(item)
    length += JSON.stringify(item).length + 1
  }
  const text = JSON.stringify({ n, t, items })
  return text.length >= size ? text : text.slice(0, -1) + `,"note":"${'-'.repeat(Math.max(0, size - text.length - 10))}"}`
}
