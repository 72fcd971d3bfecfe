#!/usr/bin/env node
/**
 * `floodgate serve <dir>`: serves a folder as a protected streaming app and prints its URL.
 */
import { existsSync, readFileSync, statSync } from 'node:fs'
import { resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { Server, StreamingApp } from './index'

const USAGE = `usage: floodgate serve <dir> [--port N] [--host H] [--max-connections-per-ip N]
                       [--rate-limit-bandwidth SIZE] [--chunk-size SIZE]
                       [--upload-dir DIR] [--max-upload-size SIZE] [--config file.json]`

function fail(message: string): never {
  process.stderr.write(`floodgate: ${message}\n`)
  process.exit(2)
}

function numberOrText(value: string | undefined): number | string | undefined {
  if (value === undefined) return undefined
  return /^\d+$/.test(value) ? Number(value) : value
}

async function main(argv: string[]): Promise<void> {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        port: { type: 'string', default: '8080' },
        host: { type: 'string', default: '127.0.0.1' },
        'max-connections-per-ip': { type: 'string' },
        'rate-limit-bandwidth': { type: 'string' },
        'chunk-size': { type: 'string' },
        'upload-dir': { type: 'string' },
        'max-upload-size': { type: 'string' },
        config: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    })
  } catch (err) {
    fail(`${(err as Error).message}\n${USAGE}`)
  }
  const { values, positionals } = parsed
  if (values.help) {
    process.stdout.write(`${USAGE}\n`)
    return
  }
  const [command, dir, ...extra] = positionals
  if (command !== 'serve' || !dir || extra.length > 0) fail(USAGE)
  const root = resolve(dir)
  if (!existsSync(root) || !statSync(root).isDirectory()) fail(`${dir}: no such folder`)

  let fileConfig: { server?: object; streaming?: object } = {}
  if (values.config) {
    try {
      fileConfig = JSON.parse(readFileSync(values.config, 'utf8'))
    } catch (err) {
      fail(`--config ${values.config}: ${(err as Error).message}`)
    }
  }
  const port = Number(values.port)
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`--port ${values.port}: not a port number`)

  try {
    const server = new Server({
      ...fileConfig.server,
      ...(values['max-connections-per-ip'] !== undefined && {
        maxConnectionsPerIp: Number(values['max-connections-per-ip']),
      }),
    })
    const app = new StreamingApp({
      ...fileConfig.streaming,
      ...(values['rate-limit-bandwidth'] !== undefined && {
        rateLimitBandwidth: numberOrText(values['rate-limit-bandwidth']),
      }),
      ...(values['chunk-size'] !== undefined && { chunkSize: numberOrText(values['chunk-size']) }),
      ...(values['max-upload-size'] !== undefined && { maxUploadSize: numberOrText(values['max-upload-size']) }),
    })
    // With --upload-dir, PUT/POST /upload/<name> stores files there; everything else is the folder.
    if (values['upload-dir'] !== undefined) app.uploads('/upload', { dir: resolve(values['upload-dir']) })
    app.files('/', { root })
    server.mount('/', app)
    const { url } = await server.listen({ port, host: values.host })
    // Handlers first: whoever reads the URL may signal at once.
    const stop = () => {
      server.close({ drain: 5_000 }).then(() => process.exit(0))
    }
    process.once('SIGINT', stop)
    process.once('SIGTERM', stop)
    process.stdout.write(`floodgate serving ${root} at ${url}/\n`)
    if (values['upload-dir'] !== undefined) process.stdout.write(`uploads: PUT ${url}/upload/<name>\n`)
  } catch (err) {
    fail((err as Error).message)
  }
}

main(process.argv.slice(2))
