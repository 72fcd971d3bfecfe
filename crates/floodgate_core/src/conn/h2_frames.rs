//! A count of the control frames an HTTP/2 client sends, from the bytes the socket wrapper
//! reads (after TLS, after the preface). h2 bounds rapid resets, CONTINUATION floods, empty
//! DATA frames and header lists itself (GOAWAY `ENHANCE_YOUR_CALM`), and answers every
//! SETTINGS and PING without a limit: a client can keep a core busy acknowledging them. Past
//! `http2MaxControlFramesPerSecond` SETTINGS, PING and PRIORITY frames in a second, the
//! connection gets GOAWAY `ENHANCE_YOUR_CALM` and is closed (counted `h2_control_flood`).
//!
//! Only frame headers are looked at (9 bytes each); payloads are skipped as they pass.

use tokio::time::Instant;

const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const PRIORITY: u8 = 0x2;
const HEADERS: u8 = 0x1;
const ACK: u8 = 0x1;

pub struct FrameCounter {
    /// The frame header being read, and how much of it has arrived.
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: usize,
    window_start: Option<Instant>,
    control_frames: u32,
    max_per_second: u32,
    /// The highest stream the client opened: the last one a GOAWAY says was seen.
    last_stream: u32,
}

impl FrameCounter {
    pub fn new(max_per_second: u32) -> Self {
        Self {
            header: [0; 9],
            header_len: 0,
            payload_left: 0,
            window_start: None,
            control_frames: 0,
            max_per_second,
            last_stream: 0,
        }
    }

    /// Accounts `bytes` read from the client; `Err` once its control frames pass the limit.
    pub fn feed(&mut self, mut bytes: &[u8], now: Instant) -> Result<(), ()> {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = self.payload_left.min(bytes.len());
                self.payload_left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (9 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            bytes = &bytes[take..];
            if self.header_len == 9 {
                self.header_len = 0;
                self.frame(now)?;
            }
        }
        Ok(())
    }

    fn frame(&mut self, now: Instant) -> Result<(), ()> {
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = self.header;
        self.payload_left = u32::from_be_bytes([0, l0, l1, l2]) as usize;
        let stream = u32::from_be_bytes([s0 & 0x7f, s1, s2, s3]);
        let control = match kind {
            SETTINGS | PING => flags & ACK == 0,
            PRIORITY => true,
            HEADERS => {
                self.last_stream = self.last_stream.max(stream);
                false
            }
            _ => false,
        };
        if !control || self.max_per_second == 0 {
            return Ok(());
        }
        match self.window_start {
            Some(start) if now.duration_since(start).as_secs() < 1 => {}
            _ => {
                self.window_start = Some(now);
                self.control_frames = 0;
            }
        }
        self.control_frames += 1;
        if self.control_frames > self.max_per_second {
            return Err(());
        }
        Ok(())
    }

    /// The GOAWAY (`ENHANCE_YOUR_CALM`) that tells the client why it is closed.
    pub fn goaway(&self) -> [u8; 17] {
        let mut frame = [0u8; 17];
        frame[..9].copy_from_slice(&[0, 0, 8, 0x7, 0, 0, 0, 0, 0]);
        frame[9..13].copy_from_slice(&self.last_stream.to_be_bytes());
        frame[13..].copy_from_slice(&11u32.to_be_bytes());
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut bytes = vec![len[1], len[2], len[3], kind, flags];
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn pings_past_the_limit_in_a_second_are_a_flood_split_anywhere() {
        let now = Instant::now();
        let mut counter = FrameCounter::new(10);
        let mut input = frame(HEADERS, 0x5, 7, &[0x82; 20]);
        for _ in 0..10 {
            input.extend(frame(PING, 0, 0, &[1; 8]));
            input.extend(frame(0x0, 0, 7, &[9; 100])); // DATA is never counted
        }
        // Fed one byte at a time: headers and payloads split across reads.
        for byte in &input {
            counter.feed(std::slice::from_ref(byte), now).unwrap();
        }
        assert_eq!(counter.feed(&frame(PING, 0, 0, &[1; 8]), now), Err(()));
        assert_eq!(&counter.goaway()[9..13], &7u32.to_be_bytes());
    }

    #[test]
    fn acks_do_not_count_and_the_window_moves_on() {
        let start = Instant::now();
        let mut counter = FrameCounter::new(2);
        for _ in 0..50 {
            counter.feed(&frame(SETTINGS, ACK, 0, &[]), start).unwrap();
            counter.feed(&frame(PING, ACK, 0, &[0; 8]), start).unwrap();
        }
        counter.feed(&frame(SETTINGS, 0, 0, &[]), start).unwrap();
        counter
            .feed(&frame(PRIORITY, 0, 3, &[0; 5]), start)
            .unwrap();
        assert!(counter.feed(&frame(PING, 0, 0, &[0; 8]), start).is_err());
        let later = start + Duration::from_millis(1001);
        assert!(counter.feed(&frame(PING, 0, 0, &[0; 8]), later).is_ok());
    }
}
