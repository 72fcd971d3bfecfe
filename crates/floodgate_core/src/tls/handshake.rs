//! The TLS handshake of an accepted connection, bounded like a request head: it must finish
//! within `headerTimeout` of accept, and a failure is counted by its reason, never logged.

use crate::metrics::{Metrics, Rejection};
use crate::observe::reject::Refusal;
use rustls::{Error as TlsError, PeerIncompatible};
use std::io;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Runs the handshake until `deadline`; `None` (counted) when it fails or runs out of time.
pub async fn accept(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    deadline: Instant,
    metrics: &Metrics,
) -> Option<TlsStream<TcpStream>> {
    let client = stream.peer_addr().ok().map(|peer| peer.ip());
    let handshake = TlsAcceptor::from(config).accept(stream);
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(err)) => {
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
