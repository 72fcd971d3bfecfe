//! WebSocket frames on the wire (RFC 6455 section 5), for sessions that hold no buffer while
//! idle.
//!
//! tungstenite parses and formats the frame headers here. Its stream type is not used: it keeps
//! a read buffer per socket for the socket's whole life, and that buffer with the stream's own
//! state was most of an idle socket's memory. A session instead reads into its worker's stack,
//! parses frames in place ([`next_frame`]), and keeps bytes only for a frame (or a fragmented
//! message, [`Assembler`]) that has not fully arrived yet.

use bytes::{BufMut, Bytes, BytesMut};
use std::io::Cursor;
use std::ops::Range;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// Control frames carry at most this much (RFC 6455 section 5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Why the client's input ends the session, with the close code it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// A frame or message over `wsMaxMessageSize`: 1009.
    TooBig,
    /// A text message or close reason that is not UTF-8: 1007.
    BadUtf8,
    /// Anything else the protocol forbids: 1002.
    Protocol,
}

/// A complete frame inside a buffer: its header, where its payload is, and its whole length.
pub struct FrameAt {
    pub header: FrameHeader,
    pub payload: Range<usize>,
    pub end: usize,
}

/// The next complete frame at the start of `data`; `Ok(None)` when more bytes are needed.
/// A frame declaring more than `max_payload` is refused from its header alone, before any of
/// its payload is buffered.
pub fn next_frame(data: &[u8], max_payload: usize) -> Result<Option<FrameAt>, ReadError> {
    let mut cursor = Cursor::new(data);
    let Some((header, length)) =
        FrameHeader::parse(&mut cursor).map_err(|_| ReadError::Protocol)?
    else {
        return Ok(None);
    };
    if matches!(header.opcode, OpCode::Control(_)) && length > MAX_CONTROL_PAYLOAD {
        return Err(ReadError::Protocol);
    }
    if length > max_payload as u64 {
        return Err(ReadError::TooBig);
    }
    let start = cursor.position() as usize;
    let end = start + length as usize;
    if data.len() < end {
        return Ok(None);
    }
    Ok(Some(FrameAt {
        header,
        payload: start..end,
        end,
    }))
}

/// How many bytes the frame starting at `data` needs in all, once its header has arrived.
pub fn frame_len(data: &[u8]) -> Option<usize> {
    let mut cursor = Cursor::new(data);
    let (_, length) = FrameHeader::parse(&mut cursor).ok().flatten()?;
    Some(cursor.position() as usize + length as usize)
}

/// XORs a client frame's payload with its mask, eight bytes at a time.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (index, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[index & 3];
    }
}

/// Appends one unmasked, final frame (server to client).
pub fn write_frame(out: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    out.reserve(header.len(payload.len() as u64) + payload.len());
    // Writing into a BytesMut cannot fail.
    let _ = header.format(payload.len() as u64, &mut out.writer());
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason` (cut to fit a control frame).
pub fn write_close(out: &mut BytesMut, code: u16, reason: &str) {
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD as usize];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    let mut cut = reason.len().min(payload.len() - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
    write_frame(out, OpCode::Control(Control::Close), &payload[..2 + cut]);
}

/// What a complete frame means to the session.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Message {
        data: Bytes,
        binary: bool,
    },
    Ping(Bytes),
    Pong,
    /// The client's close frame: its code and reason, if it gave a code.
    Close(Option<(u16, String)>),
    /// A non-final fragment, kept until its message completes.
    Fragment,
}

/// Joins fragmented messages and checks each frame against the protocol.
#[derive(Default)]
pub struct Assembler {
    /// The message being received in fragments: whether binary, and its bytes so far.
    /// Boxed: almost every socket has none, almost all the time.
    partial: Option<Box<(bool, BytesMut)>>,
}

impl Assembler {
    /// Takes one client frame (`payload` still masked; unmasked here, in place).
    pub fn frame(
        &mut self,
        header: &FrameHeader,
        payload: &mut [u8],
        max_message: usize,
    ) -> Result<Incoming, ReadError> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            // No extension is ever negotiated.
            return Err(ReadError::Protocol);
        }
        // Clients must mask every frame (RFC 6455 section 5.1).
        let Some(mask) = header.mask else {
            return Err(ReadError::Protocol);
        };
        unmask(payload, mask);
        match header.opcode {
            OpCode::Data(Data::Text) | OpCode::Data(Data::Binary) => {
                if self.partial.is_some() {
                    return Err(ReadError::Protocol);
                }
                let binary = header.opcode == OpCode::Data(Data::Binary);
                if !header.is_final {
                    self.partial = Some(Box::new((binary, BytesMut::from(&payload[..]))));
                    return Ok(Incoming::Fragment);
                }
                message(Bytes::copy_from_slice(payload), binary)
            }
            OpCode::Data(Data::Continue) => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(ReadError::Protocol);
                };
                if partial.1.len() + payload.len() > max_message {
                    self.partial = None;
                    return Err(ReadError::TooBig);
                }
                partial.1.extend_from_slice(payload);
                if !header.is_final {
                    return Ok(Incoming::Fragment);
                }
                let (binary, data) = *self.partial.take().expect("checked above");
                message(data.freeze(), binary)
            }
            OpCode::Control(_) if !header.is_final => Err(ReadError::Protocol),
            OpCode::Control(Control::Ping) => Ok(Incoming::Ping(Bytes::copy_from_slice(payload))),
            OpCode::Control(Control::Pong) => Ok(Incoming::Pong),
            OpCode::Control(Control::Close) => close(payload).map(Incoming::Close),
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                Err(ReadError::Protocol)
            }
        }
    }
}

fn message(data: Bytes, binary: bool) -> Result<Incoming, ReadError> {
    if !binary && std::str::from_utf8(&data).is_err() {
        return Err(ReadError::BadUtf8);
    }
    Ok(Incoming::Message { data, binary })
}

fn close(payload: &[u8]) -> Result<Option<(u16, String)>, ReadError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ReadError::Protocol),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !CloseCode::from(code).is_allowed() {
                return Err(ReadError::Protocol);
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ReadError::BadUtf8)?;
            Ok(Some((code, reason.to_string())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [1, 2, 3, 4];

    /// A client frame as a browser would send it: `first` is the header's first byte (FIN,
    /// reserved bits, opcode); tungstenite formats and masks it.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            is_final: first & 0x80 != 0,
            rsv1: first & 0x40 != 0,
            opcode: OpCode::from(first & 0x0F),
            mask: Some(MASK),
            ..FrameHeader::default()
        };
        let frame = tokio_tungstenite::tungstenite::protocol::frame::Frame::from_payload(
            header,
            Bytes::copy_from_slice(payload),
        );
        let mut bytes = Vec::new();
        frame.format(&mut bytes).unwrap();
        bytes
    }

    fn read_one(bytes: &mut [u8], assembler: &mut Assembler) -> Result<Incoming, ReadError> {
        let at = next_frame(bytes, 1 << 20)?.expect("a whole frame");
        assembler.frame(&at.header, &mut bytes[at.payload], 1 << 20)
    }

    #[test]
    fn parses_text_binary_and_control_frames() {
        let mut assembler = Assembler::default();
        let mut text = client_frame(0x81, b"hello");
        assert_eq!(
            read_one(&mut text, &mut assembler),
            Ok(Incoming::Message {
                data: Bytes::from_static(b"hello"),
                binary: false
            })
        );
        let big = vec![7u8; 70_000];
        let mut binary = client_frame(0x82, &big);
        assert_eq!(frame_len(&binary), Some(binary.len()));
        assert!(matches!(read_one(&mut binary, &mut assembler),
            Ok(Incoming::Message { data, binary: true }) if data == big));
        let mut ping = client_frame(0x89, b"p");
        assert_eq!(
            read_one(&mut ping, &mut assembler),
            Ok(Incoming::Ping(Bytes::from_static(b"p")))
        );
        let mut close = client_frame(0x88, b"\x03\xe8bye");
        assert_eq!(
            read_one(&mut close, &mut assembler),
            Ok(Incoming::Close(Some((1000, "bye".into()))))
        );
    }

    #[test]
    fn waits_for_incomplete_frames() {
        let frame = client_frame(0x81, b"hello world");
        for cut in 0..frame.len() {
            assert!(next_frame(&frame[..cut], 1 << 20).unwrap().is_none());
        }
        assert_eq!(frame_len(&frame[..1]), None);
        // Two bytes, then the mask: the length is known once the header is whole.
        assert_eq!(frame_len(&frame[..5]), None);
        assert_eq!(frame_len(&frame[..6]), Some(frame.len()));
    }

    #[test]
    fn joins_fragments_and_bounds_them() {
        let mut assembler = Assembler::default();
        let mut first = client_frame(0x01, b"hel");
        let mut last = client_frame(0x80, b"lo");
        assert_eq!(read_one(&mut first, &mut assembler), Ok(Incoming::Fragment));
        // A control frame may come between fragments.
        let mut ping = client_frame(0x89, b"");
        assert!(matches!(
            read_one(&mut ping, &mut assembler),
            Ok(Incoming::Ping(_))
        ));
        assert_eq!(
            read_one(&mut last, &mut assembler),
            Ok(Incoming::Message {
                data: Bytes::from_static(b"hello"),
                binary: false
            })
        );
        let mut first = client_frame(0x02, &[0; 600]);
        let at = next_frame(&first, 1000).unwrap().unwrap();
        assert_eq!(
            assembler.frame(&at.header, &mut first[at.payload], 1000),
            Ok(Incoming::Fragment)
        );
        let mut more = client_frame(0x80, &[0; 600]);
        let at = next_frame(&more, 1000).unwrap().unwrap();
        assert_eq!(
            assembler.frame(&at.header, &mut more[at.payload], 1000),
            Err(ReadError::TooBig)
        );
    }

    #[test]
    fn refuses_what_the_protocol_forbids() {
        let refuse = |bytes: &mut [u8]| read_one(bytes, &mut Assembler::default()).unwrap_err();
        // Declared over the cap: refused from the header alone.
        let header = [0x82, 0x80 | 127, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4];
        assert!(matches!(
            next_frame(&header, 1 << 20),
            Err(ReadError::TooBig)
        ));
        let mut unmasked = vec![0x81, 2, b'h', b'i'];
        assert_eq!(refuse(&mut unmasked), ReadError::Protocol);
        let refused: [(u8, &[u8], ReadError, &str); 9] = [
            (0x81, b"\xff\xfe", ReadError::BadUtf8, "text not UTF-8"),
            (0xC1, b"x", ReadError::Protocol, "rsv1"),
            (0x80, b"x", ReadError::Protocol, "continuation"),
            (0x09, b"", ReadError::Protocol, "fragmented ping"),
            (0x83, b"", ReadError::Protocol, "reserved"),
            (0x88, b"\x03", ReadError::Protocol, "one-byte close payload"),
            (0x88, b"\x03\xed", ReadError::Protocol, "1005 on the wire"),
            (
                0x88,
                b"\x03\xe8\xff",
                ReadError::BadUtf8,
                "close reason not UTF-8",
            ),
            (0x8B, b"", ReadError::Protocol, "reserved control"),
        ];
        for (first_byte, payload, expected, what) in refused {
            assert_eq!(
                refuse(&mut client_frame(first_byte, payload)),
                expected,
                "{what}"
            );
        }
        let long_ping = client_frame(0x89, &[0; 126]);
        assert!(matches!(
            next_frame(&long_ping, 1 << 20),
            Err(ReadError::Protocol)
        ));
    }

    #[test]
    fn writes_server_frames() {
        let mut out = BytesMut::new();
        write_frame(&mut out, OpCode::Data(Data::Text), b"hi");
        assert_eq!(&out[..], b"\x81\x02hi");
        out.clear();
        write_frame(&mut out, OpCode::Data(Data::Binary), &[0; 300]);
        assert_eq!(&out[..4], &[0x82, 126, 1, 44]);
        assert_eq!(out.len(), 304);
        out.clear();
        write_close(&mut out, 1009, "Message too big");
        assert_eq!(&out[..4], b"\x88\x11\x03\xf1");
        out.clear();
        write_close(&mut out, 1000, &"é".repeat(100));
        assert_eq!(out.len(), 2 + 2 + 122, "cut at a character boundary");
    }

    #[test]
    fn unmasks_any_length() {
        for len in 0..20 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut masked = data.clone();
            unmask(&mut masked, MASK);
            unmask(&mut masked, MASK);
            assert_eq!(masked, data);
        }
    }
}
