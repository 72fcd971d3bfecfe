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

    mod proptests {
        //! Properties of `evaluate` against a model of RFC 9110 section 14.1.2, and of the
        //! multipart framing against an independent reader of the framed body.

        use super::super::*;
        use proptest::prelude::*;

        /// One requested range, as the model sees it.
        #[derive(Debug, Clone)]
        enum Req {
            FromTo(u64, u64),
            From(u64),
            Suffix(u64),
        }

        impl Req {
            fn text(&self) -> String {
                match self {
                    Req::FromTo(a, b) => format!("{a}-{b}"),
                    Req::From(a) => format!("{a}-"),
                    Req::Suffix(n) => format!("-{n}"),
                }
            }

            /// The inclusive byte interval it asks for in a file of `len` bytes, if satisfiable.
            fn satisfiable(&self, len: u64) -> Option<(u64, u64)> {
                match *self {
                    Req::FromTo(a, b) if a < len => Some((a, b.min(len - 1))),
                    Req::From(a) if a < len => Some((a, len - 1)),
                    Req::Suffix(n) if n > 0 && len > 0 => Some((len - n.min(len), len - 1)),
                    _ => None,
                }
            }
        }

        /// File lengths: mostly small, some at the edges of u64.
        fn file_len() -> impl Strategy<Value = u64> {
            prop_oneof![
                2 => 0u64..3000,
                2 => 0u64..24,
                1 => Just(0u64),
                1 => any::<u64>(),
                1 => (u64::MAX - 4)..=u64::MAX,
            ]
        }

        /// A position near `len` (or anywhere); small ones often, so that ranges often touch
        /// and overlap.
        fn position(len: u64) -> BoxedStrategy<u64> {
            prop_oneof![
                3 => 0..=len.saturating_add(10),
                3 => 0u64..30,
                1 => len.saturating_sub(3)..=len.saturating_add(3),
                1 => any::<u64>(),
            ]
            .boxed()
        }

        /// A well-formed range-spec (first ≤ last) for a file of `len` bytes.
        fn req(len: u64) -> BoxedStrategy<Req> {
            prop_oneof![
                3 => (position(len), position(len))
                    .prop_map(|(a, b)| Req::FromTo(a.min(b), a.max(b))),
                1 => position(len).prop_map(Req::From),
                1 => position(len).prop_map(Req::Suffix),
            ]
            .boxed()
        }

        /// The header for `reqs`, with the optional whitespace, case and empty list elements
        /// that RFC 9110's list syntax allows.
        fn header(reqs: &[Req], unit: &str, separators: &[&str]) -> String {
            let mut text = format!("{unit}=");
            for (index, req) in reqs.iter().enumerate() {
                if index > 0 {
                    text.push_str(separators[index % separators.len()]);
                }
                text.push_str(&req.text());
            }
            text
        }

        fn separator() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![",", ", ", " ,", ",\t", ",,", ", ,"])
        }

        fn unit() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec!["bytes", "Bytes", "BYTES"])
        }

        fn case() -> impl Strategy<Value = (u64, Vec<Req>, &'static str, Vec<&'static str>)> {
            file_len().prop_flat_map(|len| {
                (
                    Just(len),
                    prop::collection::vec(req(len), 1..=MAX_RANGES + 6),
                    unit(),
                    prop::collection::vec(separator(), 1..4),
                )
            })
        }

        /// Checks the shape every `Partial` must have: inside the file, sorted, apart.
        fn check_shape(ranges: &[(u64, u64)], len: u64) -> Result<(), TestCaseError> {
            prop_assert!(!ranges.is_empty());
            for &(start, end) in ranges {
                prop_assert!(
                    start <= end && end < len,
                    "{start}-{end} outside a file of {len}"
                );
            }
            for pair in ranges.windows(2) {
                // Sorted, not overlapping, not adjacent: a gap of at least one byte.
                prop_assert!(
                    pair[0]
                        .1
                        .checked_add(1)
                        .is_some_and(|next| next < pair[1].0),
                    "{:?} and {:?} should have been coalesced or sorted",
                    pair[0],
                    pair[1]
                );
            }
            Ok(())
        }

        /// Do two lists of inclusive intervals cover the same bytes? Compared on the elementary
        /// segments between every boundary, so it works for any u64 length.
        fn same_bytes(a: &[(u64, u64)], b: &[(u64, u64)]) -> bool {
            let covers = |set: &[(u64, u64)], at: u128| {
                set.iter()
                    .any(|&(s, e)| u128::from(s) <= at && at <= u128::from(e))
            };
            let mut points: Vec<u128> = a
                .iter()
                .chain(b)
                .flat_map(|&(s, e)| [u128::from(s), u128::from(e) + 1])
                .collect();
            points.sort_unstable();
            points.dedup();
            points.iter().all(|&at| covers(a, at) == covers(b, at))
        }

        fn eval_text(text: &str, len: u64) -> RangeOutcome {
            evaluate(Some(&HeaderValue::from_str(text).unwrap()), len)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Well-formed lists: the outcome is exactly what the model says.
            #[test]
            fn structured_headers_match_the_model(
                (len, reqs, unit, separators) in case()
            ) {
                let text = header(&reqs, unit, &separators);
                let outcome = eval_text(&text, len);
                if reqs.len() > MAX_RANGES {
                    prop_assert_eq!(outcome, RangeOutcome::Full, "over the cap: {}", text);
                    return Ok(());
                }
                let wanted: Vec<(u64, u64)> =
                    reqs.iter().filter_map(|req| req.satisfiable(len)).collect();
                match outcome {
                    RangeOutcome::Partial(ranges) => {
                        prop_assert!(!wanted.is_empty(), "{} on {}: {:?}", text, len, ranges);
                        check_shape(&ranges, len)?;
                        prop_assert!(
                            same_bytes(&ranges, &wanted),
                            "{} on {}: got {:?}, asked for {:?}", text, len, ranges, wanted
                        );
                    }
                    RangeOutcome::Unsatisfiable => {
                        prop_assert!(wanted.is_empty(), "{} on {}: 416 but {:?}", text, len, wanted)
                    }
                    RangeOutcome::Full => prop_assert!(false, "{} on {} ignored", text, len),
                }
            }

            /// One range-spec with last < first makes the whole header invalid: ignored.
            #[test]
            fn a_backwards_spec_voids_the_header(
                (len, mut reqs, unit, separators) in case(),
                first in 1u64..,
                gap in 1u64..1000,
                at in any::<prop::sample::Index>(),
            ) {
                reqs.truncate(MAX_RANGES - 1);
                let index = at.index(reqs.len() + 1);
                reqs.insert(index, Req::FromTo(first, first.saturating_sub(gap)));
                let text = header(&reqs, unit, &separators);
                prop_assert_eq!(eval_text(&text, len), RangeOutcome::Full, "{}", text);
            }

            /// Any header at all: no panic, and a `Partial` always has the right shape.
            #[test]
            fn arbitrary_headers_never_panic(
                len in file_len(),
                text in prop_oneof![
                    // Close to the grammar, so the parser's branches are reached.
                    "[bB][yY][tT][eE][sS]?[ \t]?=[0-9 \t,+-]{0,40}",
                    "bytes=([0-9]{0,21}-[0-9]{0,21},?){0,20}",
                    any::<String>(),
                ],
            ) {
                let header = HeaderValue::from_bytes(text.as_bytes());
                let outcome = evaluate(header.as_ref().ok(), len);
                if let RangeOutcome::Partial(ranges) = &outcome {
                    check_shape(ranges, len)?;
                }
            }

            /// Arbitrary bytes, including obs-text that `to_str` refuses.
            #[test]
            fn arbitrary_bytes_never_panic(
                len in file_len(),
                bytes in prop::collection::vec(any::<u8>(), 0..64),
            ) {
                let mut header = b"bytes=".to_vec();
                header.extend(bytes);
                if let Ok(value) = HeaderValue::from_bytes(&header) {
                    if let RangeOutcome::Partial(ranges) = evaluate(Some(&value), len) {
                        check_shape(&ranges, len)?;
                    }
                }
            }

            /// The multipart body framed as `files` frames it is exactly `body_len` bytes, and
            /// reads back (by the Content-Range of each part) to the requested bytes.
            #[test]
            fn multipart_framing_matches_its_length(
                (len, reqs, unit, separators) in case().prop_filter(
                    "a small file, under the cap", |(len, reqs, ..)| *len <= 3000 && reqs.len() <= MAX_RANGES
                ),
                boundary in "[0-9A-Za-z'()+_,./:=?-]{1,69}[0-9A-Za-z'()+_,./:=?-]",
                content_type in prop::sample::select(vec![
                    "application/octet-stream", "text/plain; charset=utf-8", "image/png",
                ]),
            ) {
                let file: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
                let text = header(&reqs, unit, &separators);
                let RangeOutcome::Partial(ranges) = eval_text(&text, len) else {
                    return Ok(());
                };
                let multipart = Multipart {
                    boundary: boundary.clone(),
                    content_type: content_type.to_string(),
                    len,
                };
                // As `files::serve` sends it.
                let mut body = Vec::new();
                for (index, &(start, end)) in ranges.iter().enumerate() {
                    body.extend(multipart.part_header(index == 0, start, end).into_bytes());
                    body.extend(&file[start as usize..=end as usize]);
                }
                body.extend(multipart.trailer().into_bytes());
                prop_assert_eq!(body.len() as u64, multipart.body_len(&ranges));

                // Read it back as a client would: delimiter, headers, the part's bytes.
                let mut rest = &body[..];
                let mut parts = Vec::new();
                let opening = format!("--{boundary}\r\n");
                prop_assert!(rest.starts_with(opening.as_bytes()));
                rest = &rest[opening.len()..];
                loop {
                    let head_end = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                    let head = std::str::from_utf8(&rest[..head_end]).unwrap();
                    let type_line = format!("Content-Type: {content_type}");
                    prop_assert!(head.lines().any(|line| line == type_line), "{}", head);
                    let range_line = head
                        .lines()
                        .find_map(|line| line.strip_prefix("Content-Range: bytes "))
                        .unwrap();
                    let (span, total) = range_line.split_once('/').unwrap();
                    prop_assert_eq!(total.parse::<u64>().unwrap(), len);
                    let (start, end) = span.split_once('-').unwrap();
                    let (start, end): (usize, usize) = (start.parse().unwrap(), end.parse().unwrap());
                    rest = &rest[head_end + 4..];
                    prop_assert_eq!(&rest[..end - start + 1], &file[start..=end]);
                    parts.push((start as u64, end as u64));
                    rest = &rest[end - start + 1..];
                    let delimiter = format!("\r\n--{boundary}");
                    prop_assert!(rest.starts_with(delimiter.as_bytes()));
                    rest = &rest[delimiter.len()..];
                    if rest == b"--\r\n" {
                        break;
                    }
                    prop_assert!(rest.starts_with(b"\r\n"));
                    rest = &rest[2..];
                }
                prop_assert_eq!(parts, ranges);
            }
        }
    }
}
