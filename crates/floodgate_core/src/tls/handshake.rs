//! The TLS handshake of an accepted connection, bounded like a request head: it must finish
//! within `headerTimeout` of accept, and a failure is counted by its reason, never logged.
//! A connection closed before its first byte (a balancer's TCP health check, a port probe, a
//! browser's unused preconnect) is no handshake at all: closed quietly, like an idle plain
//! connection, so it never counts toward a ban.

use crate::metrics::{Metrics, Rejection};
use crate::observe::reject::Refusal;
use rustls::{Error as TlsError, PeerIncompatible};
use std::io;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Runs the handshake until `deadline`; `None` when it fails or runs out of time (counted) or
/// the client closed before sending anything (not counted).
pub async fn accept(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    deadline: Instant,
    metrics: &Metrics,
) -> Option<TlsStream<TcpStream>> {
    let client = stream.peer_addr().ok().map(|peer| peer.ip());
    let handshake = async {
        // One peeked byte tells a closed connection from a hello that failed.
        if stream.peek(&mut [0u8; 1]).await.unwrap_or(0) == 0 {
            return None;
        }
        Some(TlsAcceptor::from(config).accept(stream).await)
    };
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(None) => None,
        Ok(Some(Ok(stream))) => Some(stream),
        Ok(Some(Err(err))) => {
            metrics.refuse(Refusal::new(failure_reason(&err)).client(client));
            None
        }
        Err(_) => {
            metrics.refuse(Refusal::new(Rejection::TlsHandshakeTimeout).client(client));
            None
        }
    }
}

/// Why a handshake failed, as counted.
fn failure_reason(err: &io::Error) -> Rejection {
    let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
    else {
        // The client closed or reset the connection during the handshake.
        return Rejection::TlsHandshakeFailed;
    };
    match tls {
        TlsError::PeerIncompatible(
            PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::ServerDoesNotSupportTls12Or13
            // Sent by every TLS 1.2 client; its absence is a TLS 1.0 / 1.1 hello.
            | PeerIncompatible::SignatureAlgorithmsExtensionRequired,
        ) => Rejection::TlsBadVersion,
        TlsError::PeerIncompatible(
            PeerIncompatible::NoCipherSuitesInCommon
            | PeerIncompatible::NoKxGroupsInCommon
            | PeerIncompatible::NoSignatureSchemesInCommon
            | PeerIncompatible::NoEcPointFormatsInCommon,
        ) => Rejection::TlsNoSharedCipher,
        TlsError::InvalidMessage(_)
        | TlsError::InappropriateMessage { .. }
        | TlsError::InappropriateHandshakeMessage { .. } => Rejection::TlsBadMessage,
        _ => Rejection::TlsHandshakeFailed,
    }
}
