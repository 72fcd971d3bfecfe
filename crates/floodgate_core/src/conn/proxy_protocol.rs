//! The PROXY protocol (v1 text and v2 binary, as HAProxy and AWS NLB send it): behind an L4
//! load balancer, the first bytes of a connection say whose it is. With `proxyProtocol` set,
//! every connection must come from a trusted source and start with a header; the address it
//! carries is the client's for every per-address limit and for handlers.
//!
//! The header is read with `peek` and then consumed exactly, so the bytes after it (a request,
//! a TLS ClientHello) stay in the socket: the connection is a plain socket afterwards, `sendfile`
//! included. Parsing is the `ppp` crate's.

use crate::metrics::Rejection;
use ipnet::IpNet;
use ppp::{v1, v2, HeaderResult, PartialResult};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A v2 header's 16 fixed bytes and addresses, with room for the TLVs balancers add (AWS
/// puts a VPC endpoint id there); a longer header is refused.
const MAX_HEADER: usize = 16 + 1024;

/// How often a header that arrived in part is looked at again: `peek` cannot wait for more
/// bytes than it already saw. Headers come in one segment in practice.
const PARTIAL_RETRY: Duration = Duration::from_millis(5);

/// Whether `source` may send a header at all.
pub fn trusted(source: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&source))
}

/// Reads the header at the start of `stream` before `deadline`; the client's address, or the
/// reason to close the connection.
pub async fn read_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    deadline: Instant,
) -> Result<SocketAddr, Rejection> {
    let mut buf = vec![0u8; MAX_HEADER];
    let parsed = tokio::time::timeout_at(deadline, async {
        loop {
            let seen = stream
                .peek(&mut buf)
                .await
                .map_err(|_| Rejection::ProxyProtocolInvalid)?;
            if seen == 0 {
                return Err(Rejection::ProxyProtocolInvalid);
            }
            let header = HeaderResult::parse(&buf[..seen]);
            if header.is_incomplete() {
                if seen == buf.len() {
                    return Err(Rejection::ProxyProtocolInvalid);
                }
                tokio::time::sleep(PARTIAL_RETRY).await;
                continue;
            }
            return client_of(header, peer).ok_or(Rejection::ProxyProtocolInvalid);
        }
    })
    .await
    .map_err(|_| Rejection::HeaderTimeout)??;
    let (length, client) = parsed;
    stream
        .read_exact(&mut buf[..length])
        .await
        .map_err(|_| Rejection::ProxyProtocolInvalid)?;
    Ok(client)
}

/// The header's length and the client it names: the balancer itself (`peer`) for a health
/// check (v2 `LOCAL`, v1 `UNKNOWN`), `None` when the header is malformed.
fn client_of(header: HeaderResult<'_>, peer: SocketAddr) -> Option<(usize, SocketAddr)> {
    match header {
        HeaderResult::V1(Ok(header)) => {
            let client = match header.addresses {
                v1::Addresses::Tcp4(ip) => {
                    SocketAddr::new(ip.source_address.into(), ip.source_port)
                }
                v1::Addresses::Tcp6(ip) => {
                    SocketAddr::new(ip.source_address.into(), ip.source_port)
                }
                v1::Addresses::Unknown => peer,
            };
            Some((header.header.len(), client))
        }
        HeaderResult::V2(Ok(header)) => {
            let client = match (header.command, header.addresses) {
                (v2::Command::Local, _) => peer,
                (v2::Command::Proxy, v2::Addresses::IPv4(ip)) => {
                    SocketAddr::new(ip.source_address.into(), ip.source_port)
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(ip)) => {
                    SocketAddr::new(ip.source_address.into(), ip.source_port)
                }
                // A Unix socket or no address: the connection is the balancer's own.
                (v2::Command::Proxy, _) => peer,
            };
            Some((header.len(), client))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "10.0.0.1:40000";

    fn parse(bytes: &[u8]) -> Option<(usize, SocketAddr)> {
        client_of(HeaderResult::parse(bytes), PEER.parse().unwrap())
    }

    #[test]
    fn v1_headers_name_the_client_and_their_length() {
        let header = b"PROXY TCP4 203.0.113.7 10.0.0.2 51000 443\r\n";
        let mut input = header.to_vec();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&input),
            Some((header.len(), "203.0.113.7:51000".parse().unwrap()))
        );
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n";
        assert_eq!(
            parse(v6),
            Some((v6.len(), "[2001:db8::7]:51000".parse().unwrap()))
        );
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(parse(unknown), Some((unknown.len(), PEER.parse().unwrap())));
    }

    #[test]
    fn v2_headers_name_the_client_and_local_is_the_balancer() {
        let mut proxy = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        proxy.extend_from_slice(&[
            0x21, 0x11, 0, 12, 203, 0, 113, 9, 10, 0, 0, 2, 0xC7, 0x38, 1, 187,
        ]);
        assert_eq!(
            parse(&proxy),
            Some((28, "203.0.113.9:51000".parse().unwrap()))
        );
        let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local), Some((16, PEER.parse().unwrap())));
    }

    #[test]
    fn what_is_not_a_header_is_refused_and_a_partial_one_waits() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
        assert_eq!(parse(b"PROXY TCP4 garbage here 1 2\r\n"), None);
        assert!(HeaderResult::parse(b"PROXY TCP4 203.0.113.7").is_incomplete());
        assert!(HeaderResult::parse(b"\r\n\r\n\0\r\n").is_incomplete());
    }
}
