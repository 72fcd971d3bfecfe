// The floodgate dashboard: frames from the server's event stream (`events` beside this page),
// drawn on small canvas charts. No library: a few line and bar charts are less code than a
// dependency the package would have to ship and keep up to date.
'use strict'
;(() => {
  const KEEP = 300
  // The x axis spans the frames there are, rounded up to one of these (a page opened a few
  // seconds after the server started is not squeezed into the last pixels of five minutes).
  const WINDOWS = [
    { seconds: 30, ticks: [30, 20, 10, 0], label: (s) => `−${s} s` },
    { seconds: 60, ticks: [60, 45, 30, 15, 0], label: (s) => `−${s} s` },
    { seconds: 120, ticks: [120, 90, 60, 30, 0], label: (s) => (s % 60 ? `−${s} s` : `−${s / 60} min`) },
    { seconds: 300, ticks: [300, 240, 180, 120, 60, 0], label: (s) => `−${s / 60} min` },
  ]
  const timeWindow = () => {
    const span = frames.length > 1 ? (frames[frames.length - 1].time - frames[0].time) / 1000 : 0
    return WINDOWS.find((w) => w.seconds >= span) ?? WINDOWS[WINDOWS.length - 1]
  }
  const $ = (id) => document.getElementById(id)
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim()
  const REASON_COLORS = ['#dc2626', '#ea580c', '#ca8a04', '#9333ea', '#2563eb', '#0891b2', '#db2777', '#65a30d', '#7c3aed', '#0d9488', '#b45309', '#475569']
  const reasonColors = new Map()
  const colorOf = (reason) => {
    if (!reasonColors.has(reason)) reasonColors.set(reason, REASON_COLORS[reasonColors.size % REASON_COLORS.length])
    return reasonColors.get(reason)
  }

  /** @type {any[]} */
  let frames = []

  // ---- formatting ----
  const int = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 })
  const one = new Intl.NumberFormat('en-US', { maximumFractionDigits: 1 })
  const count = (n) => (n >= 10 || n === 0 ? int.format(n) : one.format(n))
  const bytes = (n) => {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
    let i = 0
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024
      i++
    }
    return `${n >= 100 || i === 0 ? int.format(n) : one.format(n)} ${units[i]}`
  }
  const rate = (n) => `${bytes(n)}/s`
  const seconds = (s) => {
    if (s === null || s === undefined) return '–'
    if (s === 0) return '0'
    if (s < 0.001) return `${int.format(s * 1e6)} µs`
    if (s < 1) return `${one.format(s * 1000)} ms`
    return `${one.format(s)} s`
  }
  const ago = (ms) => {
    const s = Math.max(0, Math.round(ms / 1000))
    if (s < 1) return 'now'
    if (s < 60) return `${s} s ago`
    if (s < 3600) return `${Math.floor(s / 60)} min ago`
    return `${Math.floor(s / 3600)} h ago`
  }
  /** Shows `text` in `id`, its unit (what follows the number) smaller; the raw value in `data-value`. */
  const setValue = (id, value, text) => {
    const el = $(id)
    el.dataset.value = String(value ?? '')
    const [, number, unit] = /^([^ ]+)(?: (.+))?$/.exec(text) ?? ['', text]
    if (!unit) {
      el.textContent = text
      return
    }
    const small = document.createElement('span')
    small.className = 'unit'
    small.textContent = unit
    el.replaceChildren(number, small)
  }

  // ---- charts ----
  /** A nice round upper bound for the y axis. */
  function niceMax(value, floor) {
    const v = Math.max(value, floor)
    const power = 10 ** Math.floor(Math.log10(v))
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= v) return step * power
    return 10 * power
  }

  /** Sizes `canvas` to its box at the device's pixel ratio; returns its context and size in CSS pixels. */
  function surface(canvas) {
    const dpr = window.devicePixelRatio || 1
    const width = canvas.clientWidth
    const height = Number(canvas.getAttribute('height'))
    if (canvas.width !== Math.round(width * dpr)) canvas.width = Math.round(width * dpr)
    canvas.style.height = `${height}px`
    canvas.height = Math.round(height * dpr)
    const ctx = canvas.getContext('2d')
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0)
    ctx.clearRect(0, 0, width, height)
    return { ctx, width, height }
  }

  /**
   * Draws `series` ({ color, values: (number|null)[] }, one value per frame) over the last five
   * minutes: lines, or stacked bars with `bars`. `format` labels the y axis.
   */
  function chart(canvas, series, { format, floor = 1, bars = false }) {
    const { ctx, width, height } = surface(canvas)
    const left = 64
    const right = 8
    const top = 8
    const bottom = 20
    const plotW = width - left - right
    const plotH = height - top - bottom
    const end = frames.length ? frames[frames.length - 1].time : Date.now()
    const span = timeWindow()
    const x = (time) => left + plotW - ((end - time) / (span.seconds * 1000)) * plotW
    let max = 0
    frames.forEach((_, i) => {
      if (bars) max = Math.max(max, series.reduce((sum, s) => sum + (s.values[i] ?? 0), 0))
      else for (const s of series) max = Math.max(max, s.values[i] ?? 0)
    })
    max = niceMax(max, floor)
    const y = (value) => top + plotH - (value / max) * plotH

    ctx.font = '11px system-ui, sans-serif'
    ctx.fillStyle = css('--muted')
    ctx.strokeStyle = css('--grid')
    ctx.lineWidth = 1
    ctx.textBaseline = 'middle'
    ctx.textAlign = 'right'
    for (const fraction of [0, 0.25, 0.5, 0.75, 1]) {
      const gy = Math.round(y(max * fraction)) + 0.5
      ctx.beginPath()
      ctx.moveTo(left, gy)
      ctx.lineTo(left + plotW, gy)
      ctx.stroke()
      if (fraction % 0.5 === 0) ctx.fillText(format(max * fraction), left - 8, gy)
    }
    ctx.textAlign = 'center'
    ctx.textBaseline = 'alphabetic'
    for (const tick of span.ticks) {
      const gx = left + plotW - (tick / span.seconds) * plotW
      ctx.textAlign = tick === span.seconds ? 'left' : tick === 0 ? 'right' : 'center'
      ctx.fillText(tick === 0 ? 'now' : span.label(tick), gx, height - 4)
    }

    ctx.save()
    ctx.beginPath()
    ctx.rect(left, top - 2, plotW, plotH + 4)
    ctx.clip()
    if (bars) {
      const w = Math.max(1.5, plotW / span.seconds - 1)
      frames.forEach((frame, i) => {
        let base = 0
        for (const s of series) {
          const value = s.values[i] ?? 0
          if (value <= 0) continue
          ctx.fillStyle = s.color
          ctx.fillRect(x(frame.time) - w, y(base + value), w, y(base) - y(base + value))
          base += value
        }
      })
    } else {
      for (const s of series) {
        ctx.strokeStyle = s.color
        ctx.lineWidth = 1.75
        ctx.lineJoin = 'round'
        ctx.beginPath()
        let drawing = false
        let first = 0
        frames.forEach((frame, i) => {
          const value = s.values[i]
          if (value === null || value === undefined) {
            drawing = false
            return
          }
          if (!drawing) {
            ctx.moveTo(x(frame.time), y(value))
            first = i
          } else ctx.lineTo(x(frame.time), y(value))
          drawing = true
        })
        ctx.stroke()
        if (s.fill && frames.length > 1) {
          ctx.lineTo(x(frames[frames.length - 1].time), y(0))
          ctx.lineTo(x(frames[first].time), y(0))
          ctx.closePath()
          ctx.globalAlpha = 0.1
          ctx.fillStyle = s.color
          ctx.fill()
          ctx.globalAlpha = 1
        }
      }
    }
    ctx.restore()
  }

  function legend(id, entries) {
    const el = $(id)
    el.replaceChildren(
      ...entries.map(({ color, label, value }) => {
        const key = document.createElement('span')
        key.className = 'key'
        const swatch = document.createElement('span')
        swatch.className = 'swatch'
        swatch.style.background = color
        const strong = document.createElement('b')
        strong.textContent = value
        key.append(swatch, `${label} `, strong)
        return key
      }),
    )
  }

  // ---- the page ----
  function cell(text, className, value) {
    const td = document.createElement('td')
    if (className) td.className = className
    if (value !== undefined) td.dataset.value = String(value)
    td.textContent = text
    return td
  }

  function reasonTag(reason) {
    const span = document.createElement('span')
    span.className = 'reason'
    const swatch = document.createElement('span')
    swatch.className = 'swatch'
    swatch.style.background = colorOf(reason)
    span.append(swatch, reason)
    return span
  }

  function fillTable(id, rows, empty) {
    const body = $(id).tBodies[0]
    if (rows.length === 0) {
      const tr = document.createElement('tr')
      tr.className = 'empty'
      const td = cell(empty)
      td.colSpan = $(id).tHead.rows[0].cells.length
      tr.append(td)
      body.replaceChildren(tr)
    } else body.replaceChildren(...rows)
  }

  function render() {
    const last = frames[frames.length - 1]
    if (!last) return
    const previous = frames.length > 1 ? frames[frames.length - 2] : undefined
    const refused = Object.values(last.rejectionsPerSecond).reduce((a, b) => a + b, 0)

    setValue('connections', last.connections, int.format(last.connections))
    setValue('eventStreams', last.eventStreams, int.format(last.eventStreams))
    setValue('websockets', last.websockets, int.format(last.websockets))
    setValue('requestsPerSecond', last.requestsPerSecond, count(last.requestsPerSecond))
    setValue('bytesIn', last.bytesInPerSecond, rate(last.bytesInPerSecond))
    setValue('bytesOut', last.bytesOutPerSecond, rate(last.bytesOutPerSecond))
    setValue('p50', last.latencyP50, seconds(last.latencyP50))
    setValue('p99', last.latencyP99, seconds(last.latencyP99))
    setValue('refusedPerSecond', refused, count(refused))
    $('refusedPerSecond').parentElement.dataset.hot = String(refused > 0)
    $('connections-sub').textContent = `${count(last.connectionsPerSecond)} new/s`
    setValue('total-requests', last.requests, int.format(last.requests))
    setValue('total-connections', last.connectionsAccepted, int.format(last.connectionsAccepted))
    setValue('total-in', last.bytesIn, bytes(last.bytesIn))
    setValue('total-out', last.bytesOut, bytes(last.bytesOut))
    $('clock').textContent = `last frame ${new Date(last.time).toLocaleTimeString()}`

    const pick = (key) => frames.map((frame) => frame[key])
    const [s1, s2, s3, s4] = ['--s1', '--s2', '--s3', '--s4'].map(css)
    const open = [
      { label: 'connections', color: s1, values: pick('connections'), fill: true },
      { label: 'event streams', color: s2, values: pick('eventStreams') },
      { label: 'WebSockets', color: s3, values: pick('websockets') },
    ]
    chart($('chart-open'), open, { format: count })
    legend('legend-open', open.map((s) => ({ ...s, value: int.format(s.values[s.values.length - 1]) })))

    const bandwidth = [
      { label: 'in', color: s2, values: pick('bytesInPerSecond'), fill: true },
      { label: 'out', color: s1, values: pick('bytesOutPerSecond'), fill: true },
    ]
    chart($('chart-bandwidth'), bandwidth, { format: (n) => rate(n), floor: 1024 })
    legend('legend-bandwidth', bandwidth.map((s) => ({ ...s, value: rate(s.values[s.values.length - 1]) })))

    const requests = [{ label: 'requests/s', color: s1, values: pick('requestsPerSecond'), fill: true }]
    chart($('chart-requests'), requests, { format: count })
    legend('legend-requests', [{ ...requests[0], value: count(last.requestsPerSecond) }])

    const latency = [
      { label: 'p50', color: s2, values: pick('latencyP50') },
      { label: 'p99', color: s4, values: pick('latencyP99') },
    ]
    chart($('chart-latency'), latency, { format: seconds, floor: 0.001 })
    legend('legend-latency', latency.map((s) => ({ ...s, value: seconds(s.values[s.values.length - 1]) })))

    // Reasons seen in the window, most refused first.
    const seen = new Map()
    for (const frame of frames) for (const [reason, perSecond] of Object.entries(frame.rejectionsPerSecond)) seen.set(reason, (seen.get(reason) ?? 0) + perSecond * (frame.interval || 1))
    const reasons = [...seen.keys()].sort((a, b) => seen.get(b) - seen.get(a))
    const rejections = reasons.map((reason) => ({ label: reason, color: colorOf(reason), values: frames.map((frame) => frame.rejectionsPerSecond[reason] ?? 0) }))
    chart($('chart-rejections'), rejections, { format: count, bars: true })
    if (reasons.length) legend('legend-rejections', rejections.map((s) => ({ ...s, value: `${count(last.rejectionsPerSecond[s.label] ?? 0)}/s` })))

    const before = new Map((previous?.topOffenders ?? []).map((o) => [o.user ?? o.address, o.count]))
    const interval = last.interval || 1
    fillTable(
      'offenders',
      last.topOffenders.map((offender) => {
        const client = offender.user ?? offender.address
        const perSecond = Math.max(0, (offender.count - (before.get(client) ?? offender.count)) / interval)
        const tr = document.createElement('tr')
        tr.dataset.client = client
        const who = cell('', 'client')
        const kind = document.createElement('span')
        kind.className = 'kind'
        kind.textContent = offender.user ? 'user' : 'ip'
        who.append(kind, client)
        if (offender.user && offender.address) who.title = offender.address
        const reason = cell('')
        reason.append(reasonTag(offender.lastReason))
        tr.append(who, cell(int.format(offender.count), 'num', offender.count), cell(perSecond ? `${count(perSecond)}/s` : '–', perSecond ? 'num hot' : 'num', perSecond), reason, cell(ago(last.time - offender.lastTime), 'num'))
        return tr
      }),
      'nobody refused yet',
    )

    const totals = Object.entries(last.rejections).sort((a, b) => b[1] - a[1])
    fillTable(
      'reasons',
      totals.map(([reason, total]) => {
        const now = last.rejectionsPerSecond[reason] ?? 0
        const tr = document.createElement('tr')
        tr.dataset.reason = reason
        const name = cell('')
        name.append(reasonTag(reason))
        tr.append(name, cell(now ? `${count(now)}/s` : '–', now ? 'num hot' : 'num', now), cell(int.format(total), 'num', total))
        return tr
      }),
      'nothing refused yet',
    )
  }

  // ---- the stream ----
  const status = (state, text) => {
    $('status').dataset.state = state
    $('status-text').textContent = text
  }
  let lastFrameAt = 0
  let scheduled = false
  const redraw = () => {
    if (scheduled) return
    scheduled = true
    requestAnimationFrame(() => {
      scheduled = false
      render()
    })
  }
  // The page may be served at `/_floodgate` or `/_floodgate/`: the stream sits beside it either way.
  const base = location.pathname.endsWith('/') ? location.pathname : `${location.pathname}/`
  const source = new EventSource(`${base}events${location.search}`)
  source.addEventListener('history', (event) => {
    frames = JSON.parse(event.data).slice(-KEEP)
    lastFrameAt = Date.now()
    status('live', 'live')
    redraw()
  })
  source.addEventListener('frame', (event) => {
    frames.push(JSON.parse(event.data))
    if (frames.length > KEEP) frames.shift()
    lastFrameAt = Date.now()
    status('live', 'live')
    redraw()
  })
  source.addEventListener('error', () => {
    if (source.readyState === EventSource.CLOSED) status('refused', 'stream refused (reload to retry)')
    else status('reconnecting', 'reconnecting…')
  })
  setInterval(() => {
    if (lastFrameAt && Date.now() - lastFrameAt > 5000 && source.readyState === EventSource.OPEN) status('stalled', 'no frame for 5 s')
  }, 1000)
  window.addEventListener('resize', redraw)
})()
