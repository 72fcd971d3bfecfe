// Centrifugo v6, one instance with its memory engine: the peer of the event-stream and fan-out
// workloads (CENTRIFUGO names the binary, see lib/centrifugo.mjs). Clients connect without tokens
// and subscribe to `bench`: over its bidirectional WebSocket (`/connection/websocket`, JSON
// protocol), or on its unidirectional SSE transport, subscribed at connect
// (`/connection/uni_sse?cf_connect={"subs":{"bench":{}}}`). The Node front is lib/centrifugo-front.mjs.
import { serveCentrifugo } from '../lib/centrifugo-front.mjs'

const binary = process.env.CENTRIFUGO
if (!binary) throw new Error('CENTRIFUGO must name the binary')
await serveCentrifugo(binary, { uni_sse: { enabled: true } })
