// Centrifugo v6 with its Redis engine, one instance of a cluster on REDIS: a peer of the
// cluster-fanout workload (`go install github.com/centrifugal/centrifugo/v6@v6.9.1`; CENTRIFUGO
// names the binary, else ~/go/bin/centrifugo). Its config is made here: clients connect without
// tokens and may subscribe to any channel, the HTTP API takes a key; no compression. The Node front is
// lib/centrifugo-front.mjs.
import { existsSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { serveCentrifugo } from '../lib/centrifugo-front.mjs'

const binary = process.env.CENTRIFUGO || join(homedir(), 'go', 'bin', 'centrifugo')
if (!existsSync(binary)) throw new Error(`no Centrifugo at ${binary}`)
await serveCentrifugo(binary, { engine: { type: 'redis', redis: { address: [process.env.REDIS], prefix: 'centrifugo-bench' } } })
