// Adaptive defences (issue 20), floodgate against itself with each defence on and off:
// - valid-message echo through a route with a JSON Schema checked in Rust vs the same echo
//   without it (ws-load, 50 connections × 16 in flight, a 56-byte JSON chat message);
// - a flood of invalid messages from 1,000 sockets at a steady rate into a route whose JS
//   parses and checks each, with and without Rust dropping them first: the JS thread's CPU;
// - a reconnect storm from one address over its per-IP cap (one connection held), bans on vs
//   off: server CPU per refused connection.
import { fileURLToPath } from 'node:url'
import { readFileSync } from 'node:fs'
import net from 'node:net'
import { createRequire } from 'node:module'
import { wsLoad } from '../lib/ws-load.mjs'
import { startServer, stopServer, cpuSeconds } from '../lib/proc.mjs'

const require = createRequire(import.meta.url)
const WebSocket = require('ws')
const SERVER = fileURLToPath(new URL('../servers/floodgate-defences.mjs', import.meta.url))
const CHAT = JSON.stringify({ type: 'chat', room: 'lobby', text: 'hello, world' })
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]

/** CPU seconds of the process's main (JS) thread, from /proc/PID/task/PID/stat. */
function jsThreadSeconds(pid) {
  try {
    const fields = readFileSync(`/proc/${pid}/task/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return NaN
  }
}

async function withServer(env, work) {
  const { child, port } = await startServer(process.execPath, [SERVER], { env })
  try {
    return await work(port, child.pid)
  } finally {
    await stopServer(child)
  }
}

async function echo(route, seconds) {
  return withServer({}, async (port, pid) => {
    const before = cpuSeconds([pid])
    const load = await wsLoad('echo', { url: `ws://127.0.0.1:${port}/ws/${route}`, connections: 50, inflight: 16, payload: CHAT, seconds })
    const result = await load.result
    const cpu = cpuSeconds([pid]) - before
    return { rate: result.msgPerSec, cpuPerMessage: (cpu / Math.max(1, result.messages)) * 1e6 }
  })
}

/** 1,000 sockets, each sending `perSecond` invalid messages a second for `seconds`. */
async function invalidFlood(route, seconds, perSecond = 10) {
  return withServer({}, async (port, pid) => {
    const sockets = await Promise.all(
      Array.from({ length: 1000 }, (_, i) =>
        new Promise((resolve, reject) => {
          const ws = new WebSocket(`ws://127.0.0.1:${port}/ws/${route}`, { perMessageDeflate: false, localAddress: `127.0.0.${1 + (i % 8)}` })
          ws.once('open', () => resolve(ws))
          ws.once('error', reject)
        }),
      ),
    )
    await sleep(200)
    const [jsBefore, allBefore] = [jsThreadSeconds(pid), cpuSeconds([pid])]
    const garbage = ['{"type":"chat"', '{"type":"shout","room":"x","text":"y"}', 'not json at all', '[1,2,3]']
    let sent = 0
    for (let tick = 0; tick < seconds * 10; tick++) {
      for (const ws of sockets) for (let k = 0; k < perSecond / 10; k++) ws.send(garbage[sent++ % garbage.length])
      await sleep(100)
    }
    await sleep(300)
    const js = jsThreadSeconds(pid) - jsBefore
    const all = cpuSeconds([pid]) - allBefore
    for (const ws of sockets) ws.terminate()
    return { sent, jsCpu: js, serverCpu: all }
  })
}

/** `attempts` connections from 127.0.0.5 while one connection holds its only slot. */
async function reconnectStorm(bans, attempts) {
  return withServer({ MAX_PER_IP: '1', BAN: bans ? '1' : '0' }, async (port, pid) => {
    const holder = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.5' })
    await new Promise((resolve) => holder.once('connect', resolve))
    await sleep(100)
    const before = cpuSeconds([pid])
    let next = 0
    const worker = async () => {
      while (next < attempts) {
        next++
        await new Promise((resolve) => {
          const socket = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.5' })
          socket.on('connect', () => socket.write('GET /api/hello HTTP/1.1\r\nHost: x\r\n\r\n'))
          socket.on('data', () => socket.destroy())
          socket.on('error', () => {})
          socket.on('close', resolve)
        })
      }
    }
    await Promise.all(Array.from({ length: 16 }, worker))
    const cpu = cpuSeconds([pid]) - before
    holder.destroy()
    return (cpu / attempts) * 1e6
  })
}

export default {
  name: 'defences',
  fixtures: {},
  peers: ['floodgate'],
  async run({ quick, warmup }) {
    if (warmup) return {}
    const rounds = quick ? 1 : 3
    const seconds = quick ? 1 : 3
    const [plain, schema] = [[], []]
    for (let round = 0; round < rounds; round++) {
      plain.push(await echo('echo', seconds))
      schema.push(await echo('echo-schema', seconds))
    }
    const flood = await invalidFlood('sink', quick ? 2 : 4)
    const validated = await invalidFlood('sink-validated', quick ? 2 : 4)
    const attempts = quick ? 3_000 : 10_000
    const [stormOff, stormOn] = [await reconnectStorm(false, attempts), await reconnectStorm(true, attempts)]
    const [plainRate, schemaRate] = [median(plain.map((r) => r.rate)), median(schema.map((r) => r.rate))]
    return {
      'echo msg/s with schema': schemaRate,
      'echo msg/s without': plainRate,
      'schema cost %': (1 - schemaRate / plainRate) * 100,
      'server CPU µs/msg with schema': median(schema.map((r) => r.cpuPerMessage)),
      'server CPU µs/msg without': median(plain.map((r) => r.cpuPerMessage)),
      'invalid flood: messages': flood.sent,
      'invalid flood: JS CPU s, validated': validated.jsCpu,
      'invalid flood: JS CPU s, not validated': flood.jsCpu,
      'invalid flood: server CPU s, validated': validated.serverCpu,
      'invalid flood: server CPU s, not validated': flood.serverCpu,
      'storm: server CPU µs/refused, bans': stormOn,
      'storm: server CPU µs/refused, no bans': stormOff,
    }
  },
  primary: 'echo msg/s with schema',
}
