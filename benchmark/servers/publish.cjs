// The publishing side of the SSE fan-out workload, the same for every server.
exports.publishFor = (rate, seconds, publish) => {
  let sent = 0
  const total = rate * seconds
  const timer = setInterval(() => {
    publish(JSON.stringify({ n: sent, t: performance.timeOrigin + performance.now() }))
    if (++sent >= total) clearInterval(timer)
  }, 1000 / rate)
}
