//! `Range: bytes=...` for files of known length, and `multipart/byteranges` framing.
//!
//! Hand-written because the crates that parse ranges either reject overlapping ranges or
//! leave coalescing and the range-count cap (Apache's fix for CVE-2011-3192) to the caller,
//! which is most of the work.

use http::HeaderValue;

/// More ranges than this in one header and the header is ignored (whole file, 200).
pub const MAX_RANGES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeOutcome {
    /// No Range header, or one that is ignored (malformed, other unit, too many ranges).
    Full,
    /// Satisfiable ranges, sorted, overlapping and adjacent ones coalesced; inclusive ends.
    Partial(Vec<(u64, u64)>),
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

enum Spec {
    FromTo(u64, Option<u64>),
    Suffix(u64),
}

pub fn evaluate(range_header: Option<&HeaderValue>, len: u64) -> RangeOutcome {
    let Some(specs) = range_header.and_then(|value| parse(value.to_str().ok()?)) else {
        return RangeOutcome::Full;
    };
    if specs.len() > MAX_RANGES {
        return RangeOutcome::Full;
    }
    let mut ranges: Vec<(u64, u64)> = specs
        .into_iter()
        .filter_map(|spec| match spec {
            Spec::FromTo(start, _) if start >= len => None,
            Spec::FromTo(start, end) => Some((start, end.map_or(len - 1, |end| end.min(len - 1)))),
            Spec::Suffix(0) => None,
            Spec::Suffix(_) if len == 0 => None,
            Spec::Suffix(n) => Some((len.saturating_sub(n), len - 1)),
        })
        .collect();
    if ranges.is_empty() {
        return RangeOutcome::Unsatisfiable;
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some((_, last_end)) if start <= last_end.saturating_add(1) => {
                *last_end = (*last_end).max(end)
            }
            _ => merged.push((start, end)),
        }
    }
    RangeOutcome::Partial(merged)
}

/// Parses `bytes=a-b, c-, -d`; `None` for anything malformed.
fn parse(text: &str) -> Option<Vec<Spec>> {
    let (unit, list) = text.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (start, end) = item.split_once('-')?;
            let number = |text: &str| -> Option<u64> {
                let text = text.trim();
                (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| text.parse().ok())?
            };
            match (start.trim().is_empty(), end.trim().is_empty()) {
                (true, false) => Some(Spec::Suffix(number(end)?)),
                (false, true) => Some(Spec::FromTo(number(start)?, None)),
                (false, false) => {
                    let (start, end) = (number(start)?, number(end)?);
                    (start <= end).then_some(Spec::FromTo(start, Some(end)))
                }
                (true, true) => None,
            }
        })
        .collect::<Option<Vec<_>>>()
        .filter(|specs| !specs.is_empty())
}

/// `Content-Range` of one part: `bytes 0-99/1000`.
pub fn content_range(start: u64, end: u64, len: u64) -> String {
    format!("bytes {start}-{end}/{len}")
}

/// Framing of a `multipart/byteranges` body.
pub struct Multipart {
    pub boundary: String,
    pub content_type: String,
    pub len: u64,
}

impl Multipart {
    /// What precedes a part's bytes; the first part has no leading CRLF.
    pub fn part_header(&self, first: bool, start: u64, end: u64) -> String {
        format!(
            "{}--{}\r\nContent-Type: {}\r\nContent-Range: {}\r\n\r\n",
            if first { "" } else { "\r\n" },
            self.boundary,
            self.content_type,
            content_range(start, end, self.len)
        )
    }

    pub fn trailer(&self) -> String {
        format!("\r\n--{}--\r\n", self.boundary)
    }

    /// The exact body length, so `Content-Length` can be sent.
    pub fn body_len(&self, ranges: &[(u64, u64)]) -> u64 {
        let parts: u64 = ranges
            .iter()
            .enumerate()
            .map(|(index, (start, end))| {
                self.part_header(index == 0, *start, *end).len() as u64 + end - start + 1
            })
            .sum();
        parts + self.trailer().len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(text: &str, len: u64) -> RangeOutcome {
        evaluate(Some(&HeaderValue::from_str(text).unwrap()), len)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(
            eval("bytes=0-99", 1000),
            RangeOutcome::Partial(vec![(0, 99)])
        );
        assert_eq!(
            eval("bytes=100-", 1000),
            RangeOutcome::Partial(vec![(100, 999)])
        );
        assert_eq!(
            eval("bytes=-500", 1000),
            RangeOutcome::Partial(vec![(500, 999)])
        );
        assert_eq!(
            eval("bytes=-5000", 1000),
            RangeOutcome::Partial(vec![(0, 999)])
        );
        assert_eq!(
            eval("bytes=990-5000", 1000),
            RangeOutcome::Partial(vec![(990, 999)])
        );
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(eval("bytes=1000-", 1000), RangeOutcome::Unsatisfiable);
        assert_eq!(eval("bytes=-0", 1000), RangeOutcome::Unsatisfiable);
        assert_eq!(eval("bytes=0-1", 0), RangeOutcome::Unsatisfiable);
        assert_eq!(eval("bytes=-1", 0), RangeOutcome::Unsatisfiable);
        assert_eq!(
            eval("bytes=2000-3000, 1000-", 1000),
            RangeOutcome::Unsatisfiable
        );
    }

    #[test]
    fn malformed_is_ignored() {
        for text in [
            "bytes=abc",
            "bytes=5-1",
            "items=0-1",
            "bytes=",
            "bytes=-",
            "bytes=1-2-3",
            "bytes=+1-2",
        ] {
            assert_eq!(eval(text, 1000), RangeOutcome::Full, "{text}");
        }
        assert_eq!(evaluate(None, 10), RangeOutcome::Full);
    }

    #[test]
    fn coalesces_overlapping_and_adjacent() {
        assert_eq!(
            eval("bytes=0-10, 5-20", 1000),
            RangeOutcome::Partial(vec![(0, 20)])
        );
        assert_eq!(
            eval("bytes=10-19,0-9", 1000),
            RangeOutcome::Partial(vec![(0, 19)])
        );
        assert_eq!(
            eval("bytes=0-1,5-6,-2", 1000),
            RangeOutcome::Partial(vec![(0, 1), (5, 6), (998, 999)])
        );
    }

    #[test]
    fn caps_the_number_of_ranges() {
        let list = |n: u64| {
            (0..n)
                .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert!(
            matches!(eval(&format!("bytes={}", list(16)), 1000), RangeOutcome::Partial(r) if r.len() == 16)
        );
        assert_eq!(
            eval(&format!("bytes={}", list(17)), 1000),
            RangeOutcome::Full
        );
    }

    #[test]
    fn multipart_length_is_exact() {
        let multipart = Multipart {
            boundary: "b".into(),
            content_type: "text/plain".into(),
            len: 100,
        };
        let ranges = [(0, 9), (50, 59)];
        let body = format!(
            "{}{}{}{}{}",
            multipart.part_header(true, 0, 9),
            "x".repeat(10),
            multipart.part_header(false, 50, 59),
            "x".repeat(10),
            multipart.trailer()
        );
        assert_eq!(multipart.body_len(&ranges), body.len() as u64);
        assert!(body.starts_with(
            "--b\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-9/100\r\n\r\n"
        ));
    }
}
