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

use crate::ws::utf8::Utf8Check;

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

/// Appends a frame with `header` (formatted for the server: no mask) and `payload`.
pub fn write_formatted(out: &mut BytesMut, header: &FrameHeader, payload: &[u8]) {
    out.reserve(header.len(payload.len() as u64) + payload.len());
    // Writing into a BytesMut cannot fail.
    let _ = header.format(payload.len() as u64, &mut out.writer());
    out.extend_from_slice(payload);
}

/// Appends one final frame carrying `payload` compressed (permessage-deflate, RSV1 set).
pub fn write_compressed(
    out: &mut BytesMut,
    opcode: OpCode,
    payload: &[u8],
    deflate: &mut crate::ws::deflate::SessionDeflate,
) {
    let mut compressed = BytesMut::new();
    deflate.compress(payload, &mut compressed);
    let header = FrameHeader {
        opcode,
        rsv1: true,
        ..FrameHeader::default()
    };
    out.reserve(header.len(compressed.len() as u64) + compressed.len());
    // Writing into a BytesMut cannot fail.
    let _ = header.format(compressed.len() as u64, &mut out.writer());
    out.extend_from_slice(&compressed);
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
    /// A whole message sent compressed (permessage-deflate), not inflated yet.
    Compressed {
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
    /// The message being received in fragments. Boxed: almost every socket has none, almost
    /// all the time.
    partial: Option<Box<Partial>>,
}

/// A fragmented message so far.
struct Partial {
    binary: bool,
    /// Sent compressed: its bytes are inflated (and then checked) once it completes.
    compressed: bool,
    data: BytesMut,
    /// Text is checked fragment by fragment: a bad sequence fails the message at the fragment
    /// where it appears, not when the message completes.
    utf8: Utf8Check,
}

/// How far the text of a frame that has not fully arrived has been checked (see
/// [`Assembler::check_incomplete`]); dropped once the frame completes.
#[derive(Debug, Default)]
pub struct IncompleteCheck {
    checked: usize,
    utf8: Utf8Check,
}

/// Unmasked bytes checked in one go on the stack.
const CHECK_CHUNK: usize = 512;

impl Assembler {
    /// Takes one client frame (`payload` still masked; unmasked here, in place).
    pub fn frame(
        &mut self,
        header: &FrameHeader,
        payload: &mut [u8],
        max_message: usize,
        deflate: bool,
    ) -> Result<Incoming, ReadError> {
        // RSV1 marks a compressed message, on its first frame only, when permessage-deflate
        // was negotiated; no extension uses the other two.
        let starts_message = matches!(
            header.opcode,
            OpCode::Data(Data::Text) | OpCode::Data(Data::Binary)
        );
        if header.rsv2 || header.rsv3 || (header.rsv1 && !(deflate && starts_message)) {
            return Err(ReadError::Protocol);
        }
        let compressed = header.rsv1;
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
                    let mut utf8 = Utf8Check::default();
                    if !binary && !compressed {
                        utf8.feed(payload).map_err(|_| ReadError::BadUtf8)?;
                    }
                    self.partial = Some(Box::new(Partial {
                        binary,
                        compressed,
                        data: BytesMut::from(&payload[..]),
                        utf8,
                    }));
                    return Ok(Incoming::Fragment);
                }
                if compressed {
                    return Ok(Incoming::Compressed {
                        data: Bytes::copy_from_slice(payload),
                        binary,
                    });
                }
                message(Bytes::copy_from_slice(payload), binary)
            }
            OpCode::Data(Data::Continue) => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(ReadError::Protocol);
                };
                if partial.data.len() + payload.len() > max_message {
                    self.partial = None;
                    return Err(ReadError::TooBig);
                }
                if !partial.binary && !partial.compressed {
                    if partial.utf8.feed(payload).is_err() {
                        self.partial = None;
                        return Err(ReadError::BadUtf8);
                    }
                    if header.is_final && !partial.utf8.is_complete() {
                        self.partial = None;
                        return Err(ReadError::BadUtf8);
                    }
                }
                partial.data.extend_from_slice(payload);
                if !header.is_final {
                    return Ok(Incoming::Fragment);
                }
                let partial = *self.partial.take().expect("checked above");
                if partial.compressed {
                    return Ok(Incoming::Compressed {
                        data: partial.data.freeze(),
                        binary: partial.binary,
                    });
                }
                // Text was checked as it came.
                Ok(Incoming::Message {
                    data: partial.data.freeze(),
                    binary: partial.binary,
                })
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

impl Assembler {
    /// Checks the part that has arrived of an incomplete frame at the start of `data`, from
    /// where the last call for this frame stopped (`state`, `None` for a frame not seen yet):
    /// a text message fails with [`ReadError::BadUtf8`] as soon as its bytes cannot be UTF-8,
    /// even inside a frame that is still arriving. Other frames are left to [`Self::frame`].
    pub fn check_incomplete(
        &self,
        data: &[u8],
        state: &mut Option<Box<IncompleteCheck>>,
    ) -> Result<(), ReadError> {
        let mut cursor = Cursor::new(data);
        let Ok(Some((header, length))) = FrameHeader::parse(&mut cursor) else {
            return Ok(());
        };
        let message_utf8 = match (header.opcode, &self.partial) {
            (OpCode::Data(Data::Text), None) => Utf8Check::default(),
            (OpCode::Data(Data::Continue), Some(partial))
                if !partial.binary && !partial.compressed =>
            {
                partial.utf8
            }
            _ => return Ok(()),
        };
        let (Some(mask), false) = (header.mask, header.rsv1 || header.rsv2 || header.rsv3) else {
            return Ok(());
        };
        let start = cursor.position() as usize;
        let arrived = (data.len() - start).min(length.min(usize::MAX as u64) as usize);
        let state = state.get_or_insert_with(|| {
            Box::new(IncompleteCheck {
                checked: 0,
                utf8: message_utf8,
            })
        });
        let mut chunk = [0u8; CHECK_CHUNK];
        while state.checked < arrived {
            let len = (arrived - state.checked).min(CHECK_CHUNK);
            let from = start + state.checked;
            chunk[..len].copy_from_slice(&data[from..from + len]);
            unmask_at(&mut chunk[..len], mask, state.checked);
            state.checked += len;
            state
                .utf8
                .feed(&chunk[..len])
                .map_err(|_| ReadError::BadUtf8)?;
        }
        Ok(())
    }
}

/// Unmasks a piece of a payload that starts `offset` bytes into it.
fn unmask_at(piece: &mut [u8], mask: [u8; 4], offset: usize) {
    let turn = offset % 4;
    let rotated = [
        mask[turn],
        mask[(turn + 1) % 4],
        mask[(turn + 2) % 4],
        mask[(turn + 3) % 4],
    ];
    unmask(piece, rotated);
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
        assembler.frame(&at.header, &mut bytes[at.payload], 1 << 20, false)
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
            assembler.frame(&at.header, &mut first[at.payload], 1000, false),
            Ok(Incoming::Fragment)
        );
        let mut more = client_frame(0x80, &[0; 600]);
        let at = next_frame(&more, 1000).unwrap().unwrap();
        assert_eq!(
            assembler.frame(&at.header, &mut more[at.payload], 1000, false),
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

    mod proptests {
        //! Client byte streams (tungstenite formats and masks each frame) fed to `next_frame` and
        //! `Assembler` in arbitrary chunks, as a session does, against a model of the frames.

        use super::super::*;
        use proptest::prelude::*;
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;

        /// The message size the generated messages stay under (70 KiB).
        const MAX: usize = 70 * 1024;
        /// The longest frame header: 2 bytes, 8 of extended length, 4 of mask.
        const MAX_HEADER: usize = 14;

        /// One message to send: its kind, size, content seed, fragment cuts and the control
        /// frames sent between its fragments.
        #[derive(Debug, Clone)]
        struct Msg {
            binary: bool,
            size: usize,
            seed: u64,
            cuts: Vec<prop::sample::Index>,
            controls: Vec<(prop::sample::Index, bool, usize, u64)>,
        }

        fn bytes(seed: u64, size: usize) -> Vec<u8> {
            let mut state = seed | 1;
            (0..size)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        }

        /// Valid UTF-8 of exactly `size` bytes, with characters of every width.
        fn text(seed: u64, size: usize) -> Vec<u8> {
            let mut out = String::with_capacity(size);
            for byte in bytes(seed, size) {
                let c = ['a', 'é', '日', '🦀'][usize::from(byte) % 4];
                let c = if out.len() + c.len_utf8() <= size {
                    c
                } else {
                    'z'
                };
                out.push(c);
                if out.len() == size {
                    break;
                }
            }
            out.into_bytes()
        }

        impl Msg {
            fn data(&self) -> Vec<u8> {
                if self.binary {
                    bytes(self.seed, self.size)
                } else {
                    text(self.seed, self.size)
                }
            }
        }

        /// One frame on the wire.
        #[derive(Debug, Clone)]
        enum Wire {
            Data {
                opcode: OpCode,
                fin: bool,
                payload: Vec<u8>,
            },
            Ping(Vec<u8>),
            Pong(Vec<u8>),
            Close(u16, String),
        }

        fn wire(messages: &[Msg], close: Option<(u16, String)>) -> Vec<Wire> {
            let mut frames = Vec::new();
            for msg in messages {
                let data = msg.data();
                let mut cuts: Vec<usize> = msg
                    .cuts
                    .iter()
                    .map(|cut| cut.index(data.len() + 1))
                    .collect();
                cuts.sort_unstable();
                let mut bounds = vec![0];
                bounds.extend(cuts);
                bounds.push(data.len());
                let pieces = bounds.len() - 1;
                for piece in 0..pieces {
                    for (slot, ping, len, seed) in &msg.controls {
                        if slot.index(pieces) == piece {
                            let payload = bytes(*seed, *len);
                            frames.push(if *ping {
                                Wire::Ping(payload)
                            } else {
                                Wire::Pong(payload)
                            });
                        }
                    }
                    let opcode = match (piece, msg.binary) {
                        (0, true) => OpCode::Data(Data::Binary),
                        (0, false) => OpCode::Data(Data::Text),
                        _ => OpCode::Data(Data::Continue),
                    };
                    frames.push(Wire::Data {
                        opcode,
                        fin: piece + 1 == pieces,
                        payload: data[bounds[piece]..bounds[piece + 1]].to_vec(),
                    });
                }
            }
            if let Some((code, reason)) = close {
                frames.push(Wire::Close(code, reason));
            }
            frames
        }

        /// A frame as a client sends it, and where in it its payload starts.
        fn encode(frame: &Wire, mask: [u8; 4]) -> (Vec<u8>, usize) {
            let (opcode, fin, payload) = match frame {
                Wire::Data {
                    opcode,
                    fin,
                    payload,
                } => (*opcode, *fin, payload.clone()),
                Wire::Ping(payload) => (OpCode::Control(Control::Ping), true, payload.clone()),
                Wire::Pong(payload) => (OpCode::Control(Control::Pong), true, payload.clone()),
                Wire::Close(code, reason) => {
                    let mut payload = code.to_be_bytes().to_vec();
                    payload.extend(reason.as_bytes());
                    (OpCode::Control(Control::Close), true, payload)
                }
            };
            let header = FrameHeader {
                is_final: fin,
                opcode,
                mask: Some(mask),
                ..FrameHeader::default()
            };
            let len = payload.len();
            let mut out = Vec::new();
            Frame::from_payload(header, Bytes::from(payload))
                .format(&mut out)
                .unwrap();
            let payload_start = out.len() - len;
            (out, payload_start)
        }

        /// What the session should get from `frames` with a cap of `max`: the frames' meanings
        /// in order, and the error that ends them, if any.
        fn model(frames: &[Wire], max: usize) -> (Vec<Incoming>, Option<ReadError>) {
            let mut events = Vec::new();
            let mut partial: Option<(bool, Vec<u8>)> = None;
            for frame in frames {
                // Any frame declaring more than the cap is refused from its header, even a
                // control frame (when the cap is under 125 bytes).
                let payload_len = match frame {
                    Wire::Data { payload, .. } | Wire::Ping(payload) | Wire::Pong(payload) => {
                        payload.len()
                    }
                    Wire::Close(_, reason) => 2 + reason.len(),
                };
                if payload_len > max {
                    return (events, Some(ReadError::TooBig));
                }
                let event = match frame {
                    Wire::Data {
                        opcode,
                        fin,
                        payload,
                    } => {
                        let continued = *opcode == OpCode::Data(Data::Continue);
                        let (binary, mut data) = match continued {
                            true => partial.take().unwrap(),
                            false => (*opcode == OpCode::Data(Data::Binary), Vec::new()),
                        };
                        if continued && data.len() + payload.len() > max {
                            return (events, Some(ReadError::TooBig));
                        }
                        data.extend(payload);
                        if *fin {
                            Incoming::Message {
                                data: Bytes::from(data),
                                binary,
                            }
                        } else {
                            partial = Some((binary, data));
                            Incoming::Fragment
                        }
                    }
                    Wire::Ping(payload) => Incoming::Ping(Bytes::from(payload.clone())),
                    Wire::Pong(_) => Incoming::Pong,
                    Wire::Close(code, reason) => Incoming::Close(Some((*code, reason.clone()))),
                };
                events.push(event);
            }
            (events, None)
        }

        /// Feeds `stream` in the pieces `cuts` makes, as `Session` does: parse what has come,
        /// keep only the unparsed tail. Checks the memory bounds as it goes.
        fn run(
            stream: &[u8],
            cuts: &[usize],
            max: usize,
        ) -> Result<(Vec<Incoming>, Option<ReadError>, usize), TestCaseError> {
            let mut bounds: Vec<usize> = cuts.to_vec();
            bounds.push(0);
            bounds.push(stream.len());
            bounds.sort_unstable();
            let mut pending: Vec<u8> = Vec::new();
            let mut assembler = Assembler::default();
            let mut events = Vec::new();
            for piece in bounds.windows(2) {
                pending.extend_from_slice(&stream[piece[0]..piece[1]]);
                let mut consumed = 0;
                loop {
                    let rest = &mut pending[consumed..];
                    let at = match next_frame(rest, max) {
                        Ok(Some(at)) => at,
                        Ok(None) => break,
                        Err(err) => return Ok((events, Some(err), 0)),
                    };
                    consumed += at.end;
                    let incoming = assembler.frame(&at.header, &mut rest[at.payload], max, false);
                    if let Some(partial) = &assembler.partial {
                        prop_assert!(
                            partial.data.len() <= max,
                            "{} held, cap {}",
                            partial.data.len(),
                            max
                        );
                    }
                    match incoming {
                        Ok(incoming) => {
                            match &incoming {
                                Incoming::Message { data, .. } => prop_assert!(data.len() <= max),
                                Incoming::Ping(payload) => prop_assert!(payload.len() <= 125),
                                _ => {}
                            }
                            let close = matches!(incoming, Incoming::Close(_));
                            events.push(incoming);
                            if close {
                                return Ok((events, None, 0));
                            }
                        }
                        Err(err) => return Ok((events, Some(err), 0)),
                    }
                }
                pending.drain(..consumed);
                // Only one incomplete frame is ever kept, and never one declared over the cap.
                prop_assert!(
                    pending.len() < MAX_HEADER + max,
                    "{} bytes pending, cap {}",
                    pending.len(),
                    max
                );
            }
            Ok((events, None, pending.len()))
        }

        fn size() -> impl Strategy<Value = usize> {
            prop_oneof![
                6 => 0usize..300,
                1 => prop::sample::select(vec![125usize, 126, 127, 65535, 65536, MAX - 1]),
                1 => 0usize..MAX,
            ]
        }

        fn msg(size: impl Strategy<Value = usize>) -> impl Strategy<Value = Msg> {
            (
                any::<bool>(),
                size,
                any::<u64>(),
                prop::collection::vec(any::<prop::sample::Index>(), 0..5),
                prop::collection::vec(
                    (
                        any::<prop::sample::Index>(),
                        any::<bool>(),
                        0usize..=125,
                        any::<u64>(),
                    ),
                    0..3,
                ),
            )
                .prop_map(|(binary, size, seed, cuts, controls)| Msg {
                    binary,
                    size,
                    seed,
                    cuts,
                    controls,
                })
        }

        fn close() -> impl Strategy<Value = Option<(u16, String)>> {
            prop::option::of((
                prop::sample::select(vec![1000u16, 1001, 1003, 3000, 4999]),
                "[a-zé日🦀 ]{0,20}",
            ))
        }

        /// The stream, its frames, and where each frame and its payload start.
        fn stream(frames: &[Wire], masks: u64) -> (Vec<u8>, Vec<(usize, usize)>) {
            let mut out = Vec::new();
            let mut starts = Vec::new();
            for (index, frame) in frames.iter().enumerate() {
                let mask = (masks.rotate_left(index as u32 * 7) as u32).to_be_bytes();
                let (bytes, payload_start) = encode(frame, mask);
                starts.push((out.len(), out.len() + payload_start));
                out.extend(bytes);
            }
            (out, starts)
        }

        fn chunking(len: usize, cuts: &[prop::sample::Index]) -> Vec<usize> {
            cuts.iter().map(|cut| cut.index(len + 1)).collect()
        }

        /// The shape of an event: its kind and size, not its bytes.
        fn shape(event: &Incoming) -> (u8, usize) {
            match event {
                Incoming::Message { data, binary } => (*binary as u8, data.len()),
                Incoming::Ping(payload) => (2, payload.len()),
                Incoming::Pong => (3, 0),
                Incoming::Close(_) => (4, 0),
                Incoming::Fragment => (5, 0),
                Incoming::Compressed { data, .. } => (6, data.len()),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Messages come out whole and unchanged, whatever the chunking; over a smaller
            /// cap, the first message over it ends the stream with 1009 (TooBig).
            #[test]
            fn messages_survive_any_chunking(
                messages in prop::collection::vec(msg(size()), 1..4),
                close in close(),
                masks in any::<u64>(),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
                cap in prop_oneof![
                    2 => Just(None),
                    1 => (0usize..4096).prop_map(|cap| Some((None, cap as i64))),
                    1 => (any::<prop::sample::Index>(), -2i64..=2)
                        .prop_map(|(which, off)| Some((Some(which), off))),
                ],
            ) {
                // The cap: 70 KiB, or small, or right at the size of one of the messages.
                let max = match cap {
                    None => MAX,
                    Some((None, cap)) => cap as usize,
                    Some((Some(which), off)) => {
                        (messages[which.index(messages.len())].size as i64 + off).max(0) as usize
                    }
                };
                let frames = wire(&messages, close);
                let (bytes, _) = stream(&frames, masks);
                let (events, error, pending) = run(&bytes, &chunking(bytes.len(), &cuts), max)?;
                let (expected, expected_error) = model(&frames, max);
                prop_assert_eq!(error, expected_error);
                prop_assert_eq!(events, expected);
                if error.is_none() {
                    prop_assert_eq!(pending, 0);
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(192))]

            /// One corrupted byte anywhere: no panic and no buffering past the cap. Frames
            /// before the damaged one mean what they meant; damage inside a payload or mask
            /// keeps the framing (same kinds and sizes) or ends in 1007 (text, close reason)
            /// or 1002 (close code). Damage to a header may do anything within those bounds.
            #[test]
            fn one_corrupt_byte_is_contained(
                messages in prop::collection::vec(msg(prop_oneof![0usize..200, 0usize..MAX]), 1..3),
                close in close(),
                masks in any::<u64>(),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
                at in any::<prop::sample::Index>(),
                flip in 1u8..,
            ) {
                let frames = wire(&messages, close);
                let (mut bytes, starts) = stream(&frames, masks);
                let at = at.index(bytes.len());
                bytes[at] ^= flip;
                let (events, error, _) = run(&bytes, &chunking(bytes.len(), &cuts), MAX)?;
                let (expected, _) = model(&frames, MAX);

                // The frame holding the damaged byte; each frame means one event.
                let hit = starts.iter().rposition(|&(start, _)| start <= at).unwrap();
                prop_assert!(events.len() >= hit, "stopped before the damage: {:?}", error);
                prop_assert_eq!(&events[..hit], &expected[..hit]);
                // Damage to the mask key or payload leaves the framing as it was.
                if at + 4 >= starts[hit].1 {
                    let shapes: Vec<_> = events.iter().map(shape).collect();
                    let expected_shapes: Vec<_> = expected.iter().map(shape).collect();
                    prop_assert_eq!(&shapes[..], &expected_shapes[..shapes.len()]);
                    let text = frames[..=hit].iter().rev().find_map(|frame| match frame {
                        Wire::Data { opcode: OpCode::Data(Data::Continue), .. } => None,
                        Wire::Data { opcode, .. } => Some(*opcode == OpCode::Data(Data::Text)),
                        _ => None,
                    }) == Some(true) && matches!(frames[hit], Wire::Data { .. });
                    match (error, &frames[hit]) {
                        (None, _) => prop_assert_eq!(shapes, expected_shapes),
                        (Some(ReadError::BadUtf8), Wire::Close(..)) => {}
                        (Some(ReadError::BadUtf8), _) if text => {}
                        (Some(ReadError::Protocol), Wire::Close(..)) => {}
                        (Some(err), frame) => {
                            prop_assert!(false, "{:?} from a damaged payload of {:?}", err, frame)
                        }
                    }
                }
            }
        }
    }
}
