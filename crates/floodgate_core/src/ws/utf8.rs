//! Incremental UTF-8 checking for text messages that arrive in fragments (or a frame that
//! arrives in pieces): the first byte that can no longer begin or continue a valid sequence
//! fails the message, without waiting for the rest (RFC 6455 section 8.1, "fail fast").
//!
//! simdutf8's `compat` API tells an input cut short inside a sequence (`error_len() == None`)
//! from an invalid one; the few bytes of a cut sequence are carried to the next piece.

use simdutf8::compat::from_utf8;

/// The state between pieces: the start of a sequence cut at the end of the last piece.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Check {
    carry: [u8; 4],
    carry_len: u8,
}

/// The input is not UTF-8, whatever follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

/// Bytes in the sequence a leading byte starts (only called on bytes simdutf8 left as the
/// valid start of a cut sequence).
fn width(lead: u8) -> usize {
    match lead {
        0xF0.. => 4,
        0xE0.. => 3,
        _ => 2,
    }
}

impl Utf8Check {
    /// Checks the next piece of the text.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), Invalid> {
        if self.carry_len > 0 {
            let held = self.carry_len as usize;
            let take = (width(self.carry[0]) - held).min(input.len());
            self.carry[held..held + take].copy_from_slice(&input[..take]);
            let len = held + take;
            input = &input[take..];
            match from_utf8(&self.carry[..len]) {
                Ok(_) => self.carry_len = 0,
                Err(err) if err.error_len().is_none() => {
                    // Still cut short: the piece ended inside the sequence.
                    self.carry_len = len as u8;
                    return Ok(());
                }
                Err(_) => return Err(Invalid),
            }
        }
        match from_utf8(input) {
            Ok(_) => Ok(()),
            Err(err) if err.error_len().is_none() => {
                let rest = &input[err.valid_up_to()..];
                self.carry[..rest.len()].copy_from_slice(rest);
                self.carry_len = rest.len() as u8;
                Ok(())
            }
            Err(_) => Err(Invalid),
        }
    }

    /// Whether the text fed so far is complete (no sequence left cut short).
    pub fn is_complete(&self) -> bool {
        self.carry_len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_in_pieces(text: &[u8], cuts: &[usize]) -> Result<bool, Invalid> {
        let mut check = Utf8Check::default();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&text.len())) {
            check.feed(&text[start..cut])?;
            start = cut;
        }
        Ok(check.is_complete())
    }

    #[test]
    fn valid_text_passes_cut_anywhere() {
        let text = "κόσμε 日本 🦀 a".as_bytes();
        for a in 0..=text.len() {
            for b in a..=text.len() {
                assert_eq!(check_in_pieces(text, &[a, b]), Ok(true), "cut at {a}, {b}");
            }
        }
        // Cut inside a sequence at the end: not complete, not invalid either.
        assert_eq!(check_in_pieces(&"🦀".as_bytes()[..3], &[1, 2]), Ok(false));
    }

    #[test]
    fn fails_at_the_piece_where_the_text_becomes_invalid() {
        // The Autobahn 6.4.1 message: "κόσμε" then a code point past U+10FFFF, then "edited".
        let mut check = Utf8Check::default();
        assert_eq!(check.feed("κόσμε".as_bytes()), Ok(()));
        assert_eq!(check.feed(b"\xf4\x90\x80\x80"), Err(Invalid));
        // Cut inside the bad sequence: the first byte that cannot continue it fails.
        let mut check = Utf8Check::default();
        assert_eq!(check.feed(b"ab\xf4"), Ok(()));
        assert_eq!(check.feed(b"\x90"), Err(Invalid));
        // Surrogates and overlong forms, one byte at a time.
        for bad in [&b"\xed\xa0\x80"[..], b"\xc0\xaf", b"\xe0\x80\xaf", b"\xff"] {
            let cuts: Vec<usize> = (1..bad.len()).collect();
            assert_eq!(check_in_pieces(bad, &cuts), Err(Invalid), "{bad:?}");
        }
    }
}
