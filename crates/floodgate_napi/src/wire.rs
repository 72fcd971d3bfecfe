//! The batch layouts that cross napi, both ways, in one place (`wire.ts` is the JS half).
//!
//! A batch is a `Float64Array` of numbers (a fixed count per record, each record kind named
//! below) and one `Buffer` with every record's bytes end to end: building JS objects property
//! by property, or strings a handler may never read, costs the JS thread more than the
//! handlers themselves. Header lists inside the bytes are `name\0value\0...`, one byte per
//! character (ByteStrings, as fetch's `Headers` and Node's `http` treat them).

use bytes::Bytes;
use floodgate_core::{CloseRequest, JsBody, JsRequest, JsResponse, WsEvent, WsSend};

/// Rust → JS: requests for JS handlers. Per request, [`REQUEST_FIELDS`] numbers: `id, handler,
/// hasBody` and the byte lengths of `method, url, client, headers, params`, whose bytes follow
/// each other in the buffer (params joined as `name\0value\0...`).
pub const REQUEST_FIELDS: usize = 8;

/// Appends one request record.
pub fn encode_request(request: &JsRequest, numbers: &mut Vec<f64>, bytes: &mut Vec<u8>) {
    numbers.reserve(REQUEST_FIELDS);
    bytes.extend_from_slice(request.method.as_bytes());
    bytes.extend_from_slice(request.url.as_bytes());
    bytes.extend_from_slice(request.client.as_bytes());
    bytes.extend_from_slice(&request.headers);
    let params_start = bytes.len();
    for (index, part) in request.params.iter().enumerate() {
        if index > 0 {
            bytes.push(0);
        }
        bytes.extend_from_slice(part.as_bytes());
    }
    let params_len = bytes.len() - params_start;
    numbers.extend([
        request.id as f64,
        request.handler as f64,
        flag(request.has_body),
        request.method.len() as f64,
        request.url.len() as f64,
        request.client.len() as f64,
        request.headers.len() as f64,
        params_len as f64,
    ]);
}

/// Rust → JS: WebSocket events, [`WS_EVENT_FIELDS`] numbers each, `kind, id, a, b`:
/// open `WS_OPEN, id, route, hasUser` (strings: user, client, url, subprotocol); message
/// `WS_MESSAGE, id, binary, length` (its bytes appended to the payload); close
/// `WS_CLOSE, id, code, 0` (strings: reason); refused input `WS_REFUSED, id, code, 0`
/// (strings: reason), which JS answers with a close after its replies.
pub const WS_EVENT_FIELDS: usize = 4;
const WS_OPEN: f64 = 0.0;
const WS_MESSAGE: f64 = 1.0;
const WS_CLOSE: f64 = 2.0;
const WS_REFUSED: f64 = 3.0;

/// Appends one WebSocket event; a message's backlog guard is handed back to be kept until
/// the batch reaches JS.
pub fn encode_ws_event(
    event: WsEvent,
    numbers: &mut Vec<f64>,
    strings: &mut Vec<String>,
    payload: &mut Vec<u8>,
) -> Option<floodgate_core::JsBacklog> {
    numbers.reserve(WS_EVENT_FIELDS);
    match event {
        WsEvent::Open {
            id,
            route,
            user,
            client,
            url,
            protocol,
        } => {
            numbers.extend([WS_OPEN, id as f64, route as f64, flag(user.is_some())]);
            strings.extend([
                user.unwrap_or_default(),
                client,
                url,
                protocol.unwrap_or_default(),
            ]);
            None
        }
        WsEvent::Message {
            id,
            data,
            binary,
            backlog,
        } => {
            numbers.extend([WS_MESSAGE, id as f64, flag(binary), data.len() as f64]);
            payload.extend_from_slice(&data);
            Some(backlog)
        }
        WsEvent::Refused { id, code, reason } => {
            numbers.extend([WS_REFUSED, id as f64, code as f64, 0.0]);
            strings.push(reason);
            None
        }
        WsEvent::Close { id, code, reason } => {
            numbers.extend([WS_CLOSE, id as f64, code as f64, 0.0]);
            strings.push(reason);
            None
        }
    }
}

/// The numbers of a batch do not describe its bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// JS → Rust: complete responses, [`RESPONSE_FIELDS`] numbers each: `id, status,
/// headersLength, bodyLength` (`bodyLength` -1: no body); the bytes hold each one's header
/// list then its body.
pub const RESPONSE_FIELDS: usize = 4;

/// Decodes a response batch; bodies are slices of one copy of the payload.
pub fn decode_responses(
    numbers: &[f64],
    payload: &[u8],
) -> Result<Vec<(u64, JsResponse)>, Malformed> {
    let mut bytes = Slicer::new(numbers, RESPONSE_FIELDS, payload)?;
    let mut responses = Vec::with_capacity(numbers.len() / RESPONSE_FIELDS);
    for record in numbers.chunks_exact(RESPONSE_FIELDS) {
        let (id, status, head_len, body_len) = (record[0], record[1], record[2], record[3]);
        let headers = bytes.take(head_len)?;
        let body = if body_len < 0.0 {
            JsBody::Empty
        } else {
            JsBody::Bytes(bytes.take(body_len)?)
        };
        let response = JsResponse {
            status: status as u16,
            headers,
            body,
        };
        responses.push((id as u64, response));
    }
    Ok(responses)
}

/// JS → Rust: `ws.send` / `ws.close` calls, [`WS_SEND_FIELDS`] numbers each: `id, kind,
/// length, code` (kind `SEND_TEXT`, `SEND_BINARY` or `SEND_CLOSE`, whose bytes are the
/// reason); the bytes end to end.
pub const WS_SEND_FIELDS: usize = 4;
const SEND_TEXT: f64 = 0.0;
const SEND_BINARY: f64 = 1.0;
const SEND_CLOSE: f64 = 2.0;

/// Decodes a send batch; payloads are slices of one copy of the bytes. Text that is not
/// UTF-8 cannot come from JS strings and is skipped.
pub fn decode_ws_sends(numbers: &[f64], payload: &[u8]) -> Result<Vec<(u64, WsSend)>, Malformed> {
    let mut bytes = Slicer::new(numbers, WS_SEND_FIELDS, payload)?;
    let mut sends = Vec::with_capacity(numbers.len() / WS_SEND_FIELDS);
    for record in numbers.chunks_exact(WS_SEND_FIELDS) {
        let (id, kind, length, code) = (record[0] as u64, record[1], record[2], record[3]);
        let data = bytes.take(length)?;
        let send = if kind == SEND_TEXT {
            match data.try_into() {
                Ok(text) => WsSend::Text(text),
                Err(_) => continue,
            }
        } else if kind == SEND_BINARY {
            WsSend::Binary(data)
        } else if kind == SEND_CLOSE {
            WsSend::Close(CloseRequest {
                code: code as u16,
                reason: String::from_utf8_lossy(&data).into_owned(),
            })
        } else {
            return Err(Malformed);
        };
        sends.push((id, send));
    }
    Ok(sends)
}

/// Hands out consecutive slices of one copy of a batch's bytes.
struct Slicer {
    bytes: Bytes,
    offset: usize,
}

impl Slicer {
    fn new(numbers: &[f64], fields: usize, payload: &[u8]) -> Result<Self, Malformed> {
        if !numbers.len().is_multiple_of(fields) {
            return Err(Malformed);
        }
        Ok(Self {
            bytes: Bytes::copy_from_slice(payload),
            offset: 0,
        })
    }

    fn take(&mut self, length: f64) -> Result<Bytes, Malformed> {
        // Negative and NaN lengths are refused alike.
        if length.is_nan() || length < 0.0 {
            return Err(Malformed);
        }
        let end = self
            .offset
            .checked_add(length as usize)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(Malformed)?;
        let slice = self.bytes.slice(self.offset..end);
        self.offset = end;
        Ok(slice)
    }
}

fn flag(value: bool) -> f64 {
    if value {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_slice_heads_and_bodies() {
        let head = b"content-type\0application/json";
        let mut payload = head.to_vec();
        payload.extend_from_slice(b"{}");
        let numbers = [7.0, 200.0, head.len() as f64, 2.0, 8.0, 204.0, 0.0, -1.0];
        let responses = decode_responses(&numbers, &payload).unwrap();
        assert_eq!(responses.len(), 2);
        let (id, first) = &responses[0];
        assert_eq!((*id, first.status), (7, 200));
        assert_eq!(&first.headers[..], &head[..]);
        assert!(matches!(first.body, JsBody::Bytes(ref b) if &b[..] == b"{}"));
        let (id, second) = &responses[1];
        assert_eq!((*id, second.status), (8, 204));
        assert!(matches!(second.body, JsBody::Empty));
    }

    #[test]
    fn malformed_batches_are_refused() {
        assert!(decode_responses(&[1.0, 200.0, 5.0, 0.0], b"abc").is_err());
        assert!(decode_responses(&[1.0, 200.0], b"").is_err());
        assert_eq!(
            decode_ws_sends(&[1.0, 0.0, 9.0, 0.0], b"short").unwrap_err(),
            Malformed
        );
        assert_eq!(
            decode_ws_sends(&[1.0, 5.0, 0.0, 0.0], b"").unwrap_err(),
            Malformed
        );
    }

    #[test]
    fn ws_sends_decode_each_kind() {
        let numbers = [
            1.0,
            SEND_TEXT,
            2.0,
            0.0,
            1.0,
            SEND_BINARY,
            3.0,
            0.0,
            1.0,
            SEND_CLOSE,
            3.0,
            4000.0,
        ];
        let sends = decode_ws_sends(&numbers, b"hiabcbye").unwrap();
        assert_eq!(
            sends,
            vec![
                (1, WsSend::Text("hi".into())),
                (1, WsSend::Binary(Bytes::from_static(b"abc"))),
                (
                    1,
                    WsSend::Close(CloseRequest {
                        code: 4000,
                        reason: "bye".into()
                    })
                ),
            ]
        );
    }

    #[test]
    fn requests_and_events_have_their_field_counts() {
        let request = JsRequest {
            id: 3,
            handler: 1,
            method: "GET".into(),
            url: "/x".into(),
            client: "127.0.0.1".into(),
            headers: b"a\0b".to_vec(),
            params: vec!["id".into(), "7".into()],
            has_body: false,
        };
        let (mut numbers, mut bytes) = (Vec::new(), Vec::new());
        encode_request(&request, &mut numbers, &mut bytes);
        assert_eq!(numbers.len(), REQUEST_FIELDS);
        assert_eq!(bytes, b"GET/x127.0.0.1a\0bid\x007");
        let (mut numbers, mut strings, mut payload) = (Vec::new(), Vec::new(), Vec::new());
        let close = WsEvent::Close {
            id: 1,
            code: 1000,
            reason: "bye".into(),
        };
        assert!(encode_ws_event(close, &mut numbers, &mut strings, &mut payload).is_none());
        assert_eq!(numbers, [WS_CLOSE, 1.0, 1000.0, 0.0]);
        assert_eq!(numbers.len(), WS_EVENT_FIELDS);
    }
}
