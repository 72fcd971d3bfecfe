//! RFC 6266 `Content-Disposition` values, with an RFC 5987 `filename*` for non-ASCII names.

use http::HeaderValue;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// RFC 5987 `attr-char`: what may appear unencoded in `filename*`.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispositionKind {
    Inline,
    Attachment,
}

pub fn content_disposition(kind: DispositionKind, filename: Option<&str>) -> HeaderValue {
    let kind = match kind {
        DispositionKind::Inline => "inline",
        DispositionKind::Attachment => "attachment",
    };
    let Some(name) = filename
        .map(|name| name.replace(|c: char| c.is_control(), ""))
        .filter(|n| !n.is_empty())
    else {
        return HeaderValue::from_static(kind);
    };
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let value = if fallback == name {
        format!("{kind}; filename=\"{fallback}\"")
    } else {
        let encoded = utf8_percent_encode(&name, ATTR_CHAR);
        format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(kind: DispositionKind, name: Option<&str>) -> String {
        content_disposition(kind, name)
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn ascii_names() {
        assert_eq!(
            text(DispositionKind::Inline, Some("a b.txt")),
            "inline; filename=\"a b.txt\""
        );
        assert_eq!(text(DispositionKind::Attachment, None), "attachment");
    }

    #[test]
    fn quotes_and_non_ascii_get_filename_star() {
        assert_eq!(
            text(DispositionKind::Attachment, Some("say \"hi\".txt")),
            "attachment; filename=\"say _hi_.txt\"; filename*=UTF-8''say%20%22hi%22.txt"
        );
        assert_eq!(
            text(DispositionKind::Inline, Some("résumé €.pdf")),
            "inline; filename=\"r_sum_ _.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%E2%82%AC.pdf"
        );
    }

    #[test]
    fn control_characters_cannot_inject_headers() {
        let value = text(DispositionKind::Inline, Some("a\r\nSet-Cookie: x=1"));
        assert_eq!(value, "inline; filename=\"aSet-Cookie: x=1\"");
    }
}
