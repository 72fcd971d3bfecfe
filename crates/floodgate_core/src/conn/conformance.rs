//! HTTP/1.x message rules (RFC 9112) that hyper leaves to the server, checked once per request
//! before mount dispatch, in the order nginx checks them (`ngx_http_process_request_header`):
//!
//! - `Host` (§3.2): an HTTP/1.1 request without one, any request with more than one, or one
//!   whose value is not `uri-host [":" port]` → `400`. HTTP/1.0 may omit it (nginx agrees).
//! - `Transfer-Encoding` (§6.1): the only coding understood is `chunked`, alone → anything else
//!   (`gzip, chunked`, `chunked, chunked`, two lines) is `501`. hyper itself answers `400`
//!   when `chunked` is not the final coding and to HTTP/1.0 with `Transfer-Encoding`.
//! - `Content-Length` with `Transfer-Encoding` (§6.3) → `400`, as nginx does since 1.21.1:
//!   that pair is how request smuggling starts. hyper drops `Content-Length` from the head it
//!   hands over when both came, so the socket wrapper notes the pair while it counts the head's
//!   bytes (`HeadProgress` in `guarded_io`) and passes it here as `length_and_chunks`.
//!
//! - The absolute form (§3.2.2) naming another host than `Host` → `400` (`check_target`).
//!
//! Every refusal carries `Connection: close`: after a message whose framing is in doubt, the
//! connection cannot be trusted to find the next one. The caller counts it as `bad_request`.
//!
//! A body whose framing turns out broken while it is read (`malformed_body`) is refused the
//! same way by whoever reads it: the JS bridge and uploads.

use crate::delivery::body::{self, Body};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode, Version};

/// `None` when the head may be served; else the refusal to send.
pub fn check(
    version: Version,
    headers: &HeaderMap,
    length_and_chunks: bool,
) -> Option<Response<Body>> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version >= Version::HTTP_11 => return Some(bad_request()),
        (Some(_), Some(_)) => return Some(bad_request()),
        (Some(host), None) if !valid_host(host) => return Some(bad_request()),
        _ => {}
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if !only_chunked(headers) {
            return Some(refuse(StatusCode::NOT_IMPLEMENTED, "Not Implemented\n"));
        }
        if length_and_chunks || headers.contains_key(header::CONTENT_LENGTH) {
            return Some(bad_request());
        }
    }
    None
}

/// A request in absolute form (`GET http://host/path`) whose authority is not its `Host`:
/// RFC 9112 §3.2.2 has an origin server use the target's authority and ignore `Host`, so the
/// two name different hosts to a front end that routes by `Host` and to this server — the
/// ambiguity routing and cache-poisoning attacks need. floodgate serves no virtual hosts, so
/// it refuses the disagreement (400) rather than choose; an absolute form that agrees with
/// `Host` (as proxies send) is served.
pub fn check_target(uri: &http::Uri, headers: &HeaderMap) -> Option<Response<Body>> {
    let authority = uri.authority()?;
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    let agrees = host.is_some_and(|host| host.eq_ignore_ascii_case(authority.as_str()));
    (!agrees).then(bad_request)
}

/// Whether a body read failed because the body's framing is broken: hyper's chunked decoder
/// reports `InvalidInput` / `InvalidData` (a chunk-size line that is not hex, a size that
/// overflows, a bad line end), as opposed to the client going away (`UnexpectedEof`, a reset)
/// or an HTTP/2 stream error.
pub fn malformed_body(err: &hyper::Error) -> bool {
    std::error::Error::source(err)
        .and_then(|cause| cause.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            )
        })
}

/// `uri-host [":" port]` (RFC 9110 §7.2): an authority without user info, a host that is not
/// empty, and a port of digits only (it may be empty).
fn valid_host(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    if bytes.contains(&b'@') {
        return false;
    }
    let Ok(authority) = http::uri::Authority::try_from(bytes) else {
        return false;
    };
    let host = authority.host();
    let rest = authority.as_str().get(host.len()..).unwrap_or(":");
    let port_ok = match rest.strip_prefix(':') {
        Some(port) => port.bytes().all(|byte| byte.is_ascii_digit()),
        None => rest.is_empty(),
    };
    !host.is_empty() && port_ok
}

/// One `Transfer-Encoding` line whose whole value is `chunked` (any case, optional spaces).
fn only_chunked(headers: &HeaderMap) -> bool {
    let mut lines = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (lines.next(), lines.next()) {
        (Some(value), None) => value
            .to_str()
            .is_ok_and(|value| value.trim().eq_ignore_ascii_case("chunked")),
        _ => false,
    }
}

fn bad_request() -> Response<Body> {
    refuse(StatusCode::BAD_REQUEST, "Bad Request\n")
}

fn refuse(status: StatusCode, message: &'static str) -> Response<Body> {
    body::closing(status, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lines: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn status(version: Version, lines: &[(&str, &str)], length_and_chunks: bool) -> u16 {
        check(version, &head(lines), length_and_chunks)
            .map(|response| {
                assert_eq!(response.headers()[header::CONNECTION], "close");
                response.status().as_u16()
            })
            .unwrap_or(0)
    }

    const V11: Version = Version::HTTP_11;
    const V10: Version = Version::HTTP_10;

    #[test]
    fn host_is_required_in_http_1_1_once_and_valid() {
        assert_eq!(status(V11, &[], false), 400);
        assert_eq!(status(V11, &[("host", "a"), ("host", "b")], false), 400);
        assert_eq!(status(V11, &[("host", "a"), ("host", "a")], false), 400);
        assert_eq!(status(V10, &[("host", "a"), ("host", "b")], false), 400);
        for bad in [
            "", "a/b", "user@a", "a b", ":80", "a:b", "a:80:80", "[::1", "a:8x",
        ] {
            assert_eq!(status(V11, &[("host", bad)], false), 400, "{bad:?}");
        }
        assert_eq!(status(V10, &[], false), 0, "HTTP/1.0 may omit Host");
        for good in [
            "example.com",
            "EXAMPLE.com:8080",
            "127.0.0.1:3000",
            "[::1]:80",
            "a_b-c",
            "a:",
        ] {
            assert_eq!(status(V11, &[("host", good)], false), 0, "{good:?}");
        }
    }

    #[test]
    fn transfer_encoding_is_chunked_alone_or_501() {
        let host = ("host", "x");
        assert_eq!(
            status(V11, &[host, ("transfer-encoding", "chunked")], false),
            0
        );
        assert_eq!(
            status(V11, &[host, ("transfer-encoding", " Chunked ")], false),
            0
        );
        for coding in ["gzip, chunked", "chunked, chunked", "gzip", "identity"] {
            let lines = [host, ("transfer-encoding", coding)];
            assert_eq!(status(V11, &lines, false), 501, "{coding:?}");
        }
        let two = [
            host,
            ("transfer-encoding", "gzip"),
            ("transfer-encoding", "chunked"),
        ];
        assert_eq!(status(V11, &two, false), 501);
    }

    #[test]
    fn an_absolute_form_must_name_the_host() {
        let target = |uri: &str, host: &str| {
            let uri: http::Uri = uri.parse().unwrap();
            check_target(&uri, &head(&[("host", host)])).map(|r| r.status().as_u16())
        };
        assert_eq!(target("/a", "x"), None, "origin form");
        assert_eq!(target("http://x/a", "x"), None);
        assert_eq!(target("http://X:8080/a", "x:8080"), None);
        assert_eq!(target("http://evil.example/a", "x"), Some(400));
        assert_eq!(target("http://x:81/a", "x:80"), Some(400));
    }

    #[test]
    fn content_length_with_transfer_encoding_is_400() {
        let host = ("host", "x");
        let chunked = ("transfer-encoding", "chunked");
        assert_eq!(
            status(V11, &[host, chunked], true),
            400,
            "noted by the socket"
        );
        let both = [host, chunked, ("content-length", "5")];
        assert_eq!(status(V11, &both, false), 400, "both still in the head");
        assert_eq!(status(V11, &[host, ("content-length", "5")], false), 0);
        // The coding is checked first: 501 wins, as in nginx.
        let gzip = [host, ("transfer-encoding", "gzip, chunked")];
        assert_eq!(status(V11, &gzip, true), 501);
    }
}
