//! permessage-deflate (RFC 7692): the handshake's negotiation, and messages compressed and
//! inflated with flate2 on zlib-rs (raw deflate, any window of 9 to 15 bits).
//!
//! Deflate contexts are the memory cost of compression (zlib's compressor holds about 256 KiB
//! at a 15-bit window, its inflater about 40 KiB), so the defaults keep none per socket: with
//! `serverNoContextTakeover` each message is compressed on its own by the worker thread's
//! shared compressor (uWS.js `SHARED_COMPRESSOR`), and with `clientNoContextTakeover` (asked of
//! the client) each message is inflated by the worker's shared inflater. A route that turns
//! either off gives each socket its own context, created with the first message that needs it.
//!
//! Inflation is bounded: output past `wsMaxMessageSize` stops it with [`Inflated::TooBig`], so
//! a small frame that would inflate to gigabytes costs at most the limit.

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use http::{HeaderMap, HeaderValue};
use std::cell::RefCell;
use std::sync::OnceLock;

/// The four bytes a sync flush ends with, left off the wire (RFC 7692 section 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Output grown per step while inflating.
const INFLATE_STEP: usize = 16 * 1024;
/// The largest window (and the only one inflation needs: any smaller one fits in it).
const MAX_WINDOW: u8 = 15;

/// A route's `compression` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    pub server_max_window_bits: u8,
    pub client_max_window_bits: u8,
    /// Messages shorter than this go uncompressed.
    pub threshold: usize,
}

/// What the handshake agreed for one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The server compresses each message on its own (no context kept between messages).
    pub server_no_context_takeover: bool,
    /// The client does the same, so its messages are inflated each on its own.
    pub client_no_context_takeover: bool,
    /// The server's window.
    pub server_window: u8,
    pub threshold: usize,
}

/// One offer's parameters (RFC 7692 section 7.1).
#[derive(Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value (the client accepts any).
    client_max_window_bits: Option<Option<u8>>,
}

/// The first permessage-deflate offer in `Sec-WebSocket-Extensions` the route can accept,
/// with the response header's value. Offers with unknown or repeated parameters, or windows
/// out of range, are declined (the next one is tried).
pub fn negotiate(headers: &HeaderMap, config: &DeflateConfig) -> Option<(Negotiated, HeaderValue)> {
    let offers = headers
        .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','));
    for offer in offers {
        let mut params = offer.split(';').map(str::trim);
        if params.next() != Some("permessage-deflate") {
            continue;
        }
        let Some(offer) = parse_offer(params) else {
            continue;
        };
        if let Some(accepted) = accept(&offer, config) {
            return Some(accepted);
        }
    }
    None
}

fn parse_offer<'a>(params: impl Iterator<Item = &'a str>) -> Option<Offer> {
    let mut offer = Offer::default();
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        let bits = |value: Option<&str>| -> Option<u8> {
            let bits: u8 = value?.parse().ok()?;
            (8..=15).contains(&bits).then_some(bits)
        };
        match name {
            "server_no_context_takeover"
                if value.is_none() && !offer.server_no_context_takeover =>
            {
                offer.server_no_context_takeover = true
            }
            "client_no_context_takeover"
                if value.is_none() && !offer.client_no_context_takeover =>
            {
                offer.client_no_context_takeover = true
            }
            "server_max_window_bits" if offer.server_max_window_bits.is_none() => {
                offer.server_max_window_bits = Some(bits(value)?)
            }
            "client_max_window_bits" if offer.client_max_window_bits.is_none() => {
                offer.client_max_window_bits = Some(match value {
                    None => None,
                    Some(_) => Some(bits(value)?),
                })
            }
            _ => return None,
        }
    }
    Some(offer)
}

fn accept(offer: &Offer, config: &DeflateConfig) -> Option<(Negotiated, HeaderValue)> {
    // zlib's raw deflate has no 8-bit window; 9 is the smallest it can promise.
    let server_window = match offer.server_max_window_bits {
        Some(bits) if bits < 9 => return None,
        Some(bits) => bits.min(config.server_max_window_bits),
        None => config.server_max_window_bits,
    };
    let server_no_context_takeover =
        offer.server_no_context_takeover || config.server_no_context_takeover;
    let mut response = String::from("permessage-deflate");
    if server_no_context_takeover {
        response.push_str("; server_no_context_takeover");
    }
    // Asked of the client whenever the route wants it (the client must follow).
    let client_no_context_takeover =
        offer.client_no_context_takeover || config.client_no_context_takeover;
    if client_no_context_takeover {
        response.push_str("; client_no_context_takeover");
    }
    if server_window < MAX_WINDOW || offer.server_max_window_bits.is_some() {
        response.push_str(&format!("; server_max_window_bits={server_window}"));
    }
    // Only when offered; inflation uses the largest window whatever the client's.
    if let Some(offered) = offer.client_max_window_bits {
        let bits = offered.map_or(config.client_max_window_bits, |offered| {
            offered.min(config.client_max_window_bits)
        });
        if bits < MAX_WINDOW {
            response.push_str(&format!("; client_max_window_bits={bits}"));
        }
    }
    let negotiated = Negotiated {
        server_no_context_takeover,
        client_no_context_takeover,
        server_window,
        threshold: config.threshold,
    };
    Some((negotiated, HeaderValue::from_str(&response).ok()?))
}

/// A published event's data compressed for the sockets that share a compressor, once per
/// window size (9 to 15 bits), whatever the number of subscribers.
#[derive(Debug, Default)]
pub struct DeflatedOnce([OnceLock<Bytes>; 7]);

impl DeflatedOnce {
    /// `data` compressed at `window` bits: done by the first caller, shared by the rest.
    pub fn get(&self, window: u8, data: &[u8]) -> Bytes {
        self.0[(window.clamp(9, 15) - 9) as usize]
            .get_or_init(|| {
                let mut out = BytesMut::new();
                compress_shared(window, data, &mut out);
                out.freeze()
            })
            .clone()
    }
}

/// How a socket that shares its worker's compressor takes published events: compressed once
/// per event (at `window` bits) when they are at least `threshold` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedDeflate {
    pub window: u8,
    pub threshold: u32,
}

impl Negotiated {
    /// Set when the server side keeps no context: published events can be compressed once.
    pub fn shared(&self) -> Option<SharedDeflate> {
        self.server_no_context_takeover.then(|| SharedDeflate {
            window: self.server_window,
            threshold: self.threshold.min(u32::MAX as usize) as u32,
        })
    }
}

/// Compresses one message with the worker's shared compressor for `window`.
fn compress_shared(window: u8, payload: &[u8], out: &mut BytesMut) {
    SHARED_COMPRESSORS.with(|shared| {
        let mut shared = shared.borrow_mut();
        let slot = &mut shared[(window - 9) as usize];
        let compressor = slot.get_or_insert_with(|| new_compressor(window));
        compressor.reset();
        deflate(compressor, payload, out);
    });
}

/// Why an inflated message is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inflated {
    /// Its inflated size passed the limit (1009).
    TooBig,
    /// Not a deflate stream (1007: the data does not match the message).
    Corrupt,
}

/// One socket's compression: the agreed settings and, when a side keeps its context between
/// messages, that side's own compressor or inflater (created with the first message).
pub struct SessionDeflate {
    pub negotiated: Negotiated,
    compressor: Option<Box<Compress>>,
    inflater: Option<Box<Decompress>>,
}

thread_local! {
    /// The worker's shared compressors, one per window size (index `bits - 9`), each reset
    /// before a message.
    static SHARED_COMPRESSORS: RefCell<[Option<Box<Compress>>; 7]> = RefCell::new(Default::default());
    /// The worker's shared inflater, reset before a message.
    static SHARED_INFLATER: RefCell<Option<Box<Decompress>>> = const { RefCell::new(None) };
}

impl SessionDeflate {
    pub fn new(negotiated: Negotiated) -> Self {
        Self {
            negotiated,
            compressor: None,
            inflater: None,
        }
    }

    /// Whether a message of `len` bytes is sent compressed.
    pub fn compresses(&self, len: usize) -> bool {
        len >= self.negotiated.threshold
    }

    /// Appends `payload` compressed as one message (without the flush's tail) to `out`.
    pub fn compress(&mut self, payload: &[u8], out: &mut BytesMut) {
        let window = self.negotiated.server_window;
        if self.negotiated.server_no_context_takeover {
            compress_shared(window, payload, out);
        } else {
            let compressor = self
                .compressor
                .get_or_insert_with(|| new_compressor(window));
            deflate(compressor, payload, out);
        }
    }

    /// Inflates one message's compressed bytes, stopping once the output passes `max`.
    pub fn inflate(&mut self, compressed: &[u8], max: usize) -> Result<Bytes, Inflated> {
        if self.negotiated.client_no_context_takeover {
            SHARED_INFLATER.with(|shared| {
                let mut shared = shared.borrow_mut();
                let inflater = shared.get_or_insert_with(new_inflater);
                inflater.reset(false);
                inflate(inflater, compressed, max)
            })
        } else {
            let inflater = self.inflater.get_or_insert_with(new_inflater);
            inflate(inflater, compressed, max)
        }
    }
}

fn new_compressor(window: u8) -> Box<Compress> {
    Box::new(Compress::new_with_window_bits(
        Compression::default(),
        false,
        window,
    ))
}

fn new_inflater() -> Box<Decompress> {
    Box::new(Decompress::new_with_window_bits(false, MAX_WINDOW))
}

/// Compresses `payload` with a sync flush and drops the flush's 4-byte tail.
fn deflate(compressor: &mut Compress, payload: &[u8], out: &mut BytesMut) {
    let mut buffer: Vec<u8> = Vec::with_capacity(payload.len() / 2 + 64);
    let start_in = compressor.total_in();
    loop {
        let consumed = (compressor.total_in() - start_in) as usize;
        if buffer.capacity() - buffer.len() < 64 {
            buffer.reserve(buffer.capacity().max(64));
        }
        // Compressing into memory cannot fail with a well-formed state.
        let status = compressor
            .compress_vec(&payload[consumed..], &mut buffer, FlushCompress::Sync)
            .unwrap_or(Status::StreamEnd);
        let done = (compressor.total_in() - start_in) as usize == payload.len();
        // A sync flush is complete once all input is in and the output did not fill up.
        if status == Status::StreamEnd || (done && buffer.len() < buffer.capacity()) {
            break;
        }
    }
    if buffer.ends_with(&TAIL) {
        buffer.truncate(buffer.len() - TAIL.len());
    }
    // An empty message still needs a deflate block (RFC 7692 section 7.2.3.6).
    if buffer.is_empty() {
        buffer.push(0x00);
    }
    out.extend_from_slice(&buffer);
}

/// Inflates `compressed` plus the flush's tail, bounded by `max` bytes of output.
fn inflate(inflater: &mut Decompress, compressed: &[u8], max: usize) -> Result<Bytes, Inflated> {
    let mut out: Vec<u8> = Vec::new();
    for input in [compressed, &TAIL[..]] {
        let start_in = inflater.total_in();
        loop {
            let consumed = (inflater.total_in() - start_in) as usize;
            if out.len() > max {
                return Err(Inflated::TooBig);
            }
            // Never more room than one byte past the limit: that byte tells "too big".
            let room = INFLATE_STEP.min(max + 1 - out.len()).max(1);
            out.reserve_exact(room);
            let spare_before = out.capacity() - out.len();
            let status = inflater
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|_| Inflated::Corrupt)?;
            let consumed_all = (inflater.total_in() - start_in) as usize == input.len();
            let filled = out.capacity() - out.len() == 0 && spare_before > 0;
            if out.len() > max {
                return Err(Inflated::TooBig);
            }
            match status {
                // A final block: nothing more may follow in this message's stream.
                Status::StreamEnd => break,
                _ if consumed_all && !filled => break,
                Status::BufError if !filled => break,
                _ => {}
            }
        }
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DeflateConfig {
        DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            threshold: 0,
        }
    }

    fn offer(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(value),
        );
        headers
    }

    fn answer(value: &'static str, config: &DeflateConfig) -> Option<String> {
        negotiate(&offer(value), config).map(|(_, header)| header.to_str().unwrap().to_string())
    }

    #[test]
    fn negotiates_what_browsers_and_ws_offer() {
        let shared = config();
        // Chromium and Firefox.
        assert_eq!(
            answer("permessage-deflate; client_max_window_bits", &shared).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        let own = DeflateConfig {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            ..config()
        };
        assert_eq!(
            answer("permessage-deflate; client_max_window_bits", &own).as_deref(),
            Some("permessage-deflate")
        );
        assert_eq!(
            answer(
                "permessage-deflate; server_max_window_bits=10; client_max_window_bits=9",
                &own
            )
            .as_deref(),
            Some("permessage-deflate; server_max_window_bits=10; client_max_window_bits=9")
        );
        // A first offer this server cannot take, then one it can.
        assert_eq!(
            answer(
                "permessage-deflate; server_max_window_bits=8, permessage-deflate",
                &own
            )
            .as_deref(),
            Some("permessage-deflate")
        );
        for declined in [
            "x-webkit-deflate-frame",
            "permessage-deflate; unknown",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover=1",
        ] {
            assert_eq!(answer(declined, &own), None, "{declined}");
        }
    }

    #[test]
    fn round_trips_with_and_without_context() {
        for keep in [false, true] {
            let negotiated = Negotiated {
                server_no_context_takeover: !keep,
                client_no_context_takeover: !keep,
                server_window: 15,
                threshold: 0,
            };
            let mut sender = SessionDeflate::new(negotiated);
            let mut receiver = SessionDeflate::new(negotiated);
            for message in [&b"hello hello hello hello"[..], b"", &[7u8; 100_000][..]] {
                let mut wire = BytesMut::new();
                sender.compress(message, &mut wire);
                assert_eq!(
                    receiver.inflate(&wire, 1 << 20).unwrap(),
                    message,
                    "keep {keep}"
                );
            }
        }
    }

    #[test]
    fn a_published_event_is_compressed_once_per_window() {
        let once = DeflatedOnce::default();
        let data = b"{\"price\": 101, \"price\": 102, \"price\": 103}".repeat(20);
        let first = once.get(15, &data);
        let again = once.get(15, &data);
        assert_eq!(
            first.as_ptr(),
            again.as_ptr(),
            "the same bytes, not compressed again"
        );
        let smaller_window = once.get(10, &data);
        assert_ne!(first.as_ptr(), smaller_window.as_ptr());
        let negotiated = Negotiated {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_window: 15,
            threshold: 0,
        };
        let mut receiver = SessionDeflate::new(negotiated);
        assert_eq!(receiver.inflate(&first, 1 << 20).unwrap(), data);
        assert_eq!(receiver.inflate(&smaller_window, 1 << 20).unwrap(), data);
    }

    #[test]
    fn inflates_what_node_zlib_sends() {
        // zlib.deflateRawSync(Buffer.alloc(1000, 7), { finishFlush: Z_SYNC_FLUSH }), tail
        // dropped: a sync-flushed block, then the empty stored block of the flush.
        let negotiated = Negotiated {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_window: 15,
            threshold: 0,
        };
        let wire = [
            0x62, 0x67, 0x1f, 0x05, 0xa3, 0x60, 0x14, 0x0c, 0x77, 0x00, 0x00,
        ];
        let inflated = SessionDeflate::new(negotiated)
            .inflate(&wire, 1 << 20)
            .unwrap();
        assert_eq!(inflated, vec![7u8; 1000]);
    }

    #[test]
    fn inflation_stops_past_the_limit() {
        let negotiated = Negotiated {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_window: 15,
            threshold: 0,
        };
        let mut bomb = BytesMut::new();
        SessionDeflate::new(negotiated).compress(&vec![0u8; 64 << 20], &mut bomb);
        assert!(bomb.len() < 100 * 1024, "{} bytes", bomb.len());
        let mut receiver = SessionDeflate::new(negotiated);
        assert_eq!(receiver.inflate(&bomb, 1 << 20), Err(Inflated::TooBig));
        // Exactly at the limit passes.
        let mut exact = BytesMut::new();
        SessionDeflate::new(negotiated).compress(&vec![1u8; 1 << 20], &mut exact);
        assert_eq!(receiver.inflate(&exact, 1 << 20).unwrap().len(), 1 << 20);
        assert_eq!(
            receiver.inflate(b"\xff\xff\xff garbage", 1 << 20),
            Err(Inflated::Corrupt)
        );
    }
}
