// A dependency-free SVG bar chart of each workload's primary metric, floodgate beside its peers.
const COLORS = { floodgate: '#2b7bb9', 'node-http': '#7f8c8d', fastify: '#9b59b6', nginx: '#27ae60', ws: '#e67e22' }
const escape = (text) => String(text).replace(/&/g, '&amp;').replace(/</g, '&lt;')

export function chart(report) {
  const rowHeight = 18
  const labelWidth = 170
  const barWidth = 420
  const rows = []
  for (const workload of report.workloads) {
    const values = Object.entries(workload.results)
      .map(([peer, result]) => [peer, result[workload.primary]])
      .filter(([, value]) => typeof value === 'number')
    if (values.length === 0) continue
    rows.push({ title: `${workload.name} (${workload.primary}, ${workload.lowerIsBetter ? 'lower' : 'higher'} is better)` })
    const max = Math.max(...values.map(([, value]) => value))
    for (const [peer, value] of values) rows.push({ peer, value, width: (value / max) * barWidth })
  }
  const height = 40 + rows.length * rowHeight
  const body = rows
    .map((row, index) => {
      const y = 30 + index * rowHeight
      if (row.title) return `<text x="4" y="${y + 13}" font-weight="bold">${escape(row.title)}</text>`
      const color = COLORS[row.peer] ?? '#555'
      const label = row.value >= 100 ? row.value.toFixed(0) : row.value.toFixed(2)
      return (
        `<text x="${labelWidth - 6}" y="${y + 13}" text-anchor="end">${escape(row.peer)}</text>` +
        `<rect x="${labelWidth}" y="${y + 2}" width="${row.width.toFixed(1)}" height="${rowHeight - 5}" fill="${color}"/>` +
        `<text x="${labelWidth + row.width + 4}" y="${y + 13}">${label}</text>`
      )
    })
    .join('\n')
  const { machine } = report
  const caption = `${report.date.slice(0, 10)} · ${machine.cores} cores · ${machine.os} · Node ${machine.node} · ${report.command}`
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${labelWidth + barWidth + 80}" height="${height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="4" y="16" fill="#444">${escape(caption)}</text>
${body}
</svg>
`
}
