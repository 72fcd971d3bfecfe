//! How an event crosses instances: one message per publish, built once from the event as it
//! was framed here, read on every other instance without copying its frame or data again.
//!
//! Layout: a header of text lines — origin instance, its sequence number, event id, frame
//! length, data offset and data length — then the SSE frame, then the data when it is not a
//! slice of the frame (multi-line data). Ids hold no line ends (`publish` refuses them).

use crate::events::bus::SharedEvent;
use bytes::{BufMut, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// An event another instance published.
pub(crate) struct Relayed {
    pub(crate) origin: String,
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) frame: Bytes,
    pub(crate) data: Utf8Bytes,
}

/// The message of `event`, published by `origin`.
pub(crate) fn encode(origin: &str, _topic: &str, event: &SharedEvent) -> Bytes {
    let frame = &event.frame;
    let data = event.data.as_str().as_bytes();
    // Where the data sits in the frame, when it is a view of it (one-line data).
    let start = (data.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
    let within = !data.is_empty() && start <= frame.len() && start + data.len() <= frame.len();
    let (offset, tail) = if within {
        (start, &[][..])
    } else {
        (frame.len(), data)
    };
    let header = format!(
        "{origin}\n{}\n{}\n{}\n{offset}\n{}\n",
        event.seq,
        event.id,
        frame.len(),
        data.len()
    );
    let mut out = BytesMut::with_capacity(header.len() + frame.len() + tail.len());
    out.put_slice(header.as_bytes());
    out.put_slice(frame);
    out.put_slice(tail);
    out.freeze()
}

/// Reads a message; `None` when it is not one.
pub(crate) fn decode(message: Bytes) -> Option<Relayed> {
    let mut lines = Vec::with_capacity(6);
    let mut at = 0;
    while lines.len() < 6 {
        let end = at + message[at..].iter().position(|b| *b == b'\n')?;
        lines.push(std::str::from_utf8(&message[at..end]).ok()?);
        at = end + 1;
    }
    let number = |text: &str| text.parse::<usize>().ok();
    let (frame_len, offset, data_len) = (number(lines[3])?, number(lines[4])?, number(lines[5])?);
    let body = message.slice(at..);
    if frame_len > body.len() || offset.checked_add(data_len)? > body.len() {
        return None;
    }
    Some(Relayed {
        origin: lines[0].to_string(),
        seq: lines[1].parse().ok()?,
        id: lines[2].to_string(),
        frame: body.slice(..frame_len),
        data: Utf8Bytes::try_from(body.slice(offset..offset + data_len)).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::bus::{Bus, Sink};
    use std::sync::{Arc, Mutex};

    struct Keep(Mutex<Vec<SharedEvent>>);
    impl Sink for Keep {
        fn deliver(&self, event: &SharedEvent) {
            self.0.lock().unwrap().push(Arc::clone(event));
        }
    }

    fn published(data: &str) -> SharedEvent {
        let bus = Bus::new();
        let keep = Arc::new(Keep(Mutex::new(Vec::new())));
        let _guard = bus.subscribe(vec!["t".into()], keep.clone());
        bus.publish("t", data, Some("kind"), Some("id-1"));
        let event = keep.0.lock().unwrap().pop().unwrap();
        event
    }

    #[test]
    fn round_trips_one_line_and_multi_line_data() {
        for data in ["one line", "two\nlines", "", "ends\r\n"] {
            let event = published(data);
            let relayed = decode(encode("origin", "t", &event)).unwrap();
            assert_eq!(relayed.origin, "origin");
            assert_eq!(relayed.seq, event.seq);
            assert_eq!(relayed.id, "id-1");
            assert_eq!(relayed.frame, event.frame);
            assert_eq!(relayed.data.as_str(), data);
        }
    }

    #[test]
    fn one_line_data_is_not_sent_twice() {
        let event = published("some data on one line");
        let message = encode("o", "t", &event);
        assert!(message.len() < event.frame.len() + 40, "{message:?}");
    }

    #[test]
    fn refuses_what_is_not_a_message() {
        assert!(decode(Bytes::from_static(b"nothing")).is_none());
        assert!(decode(Bytes::from_static(b"o\n1\nid\n99\n0\n0\nshort")).is_none());
        assert!(decode(Bytes::from_static(b"o\nx\nid\n0\n0\n0\n")).is_none());
    }
}
