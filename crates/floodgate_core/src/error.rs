//! The engine's error: a kind an embedder can match on, and a message for people.
//!
//! Modelled on hyper's opaque error with kinds: callers match [`ErrorKind`] (or the stable
//! [`Error::code`] a binding hands on, such as `EADDRINUSE` or `ERR_FLOODGATE_OPTION`), never
//! the text.

use std::fmt;
use std::io;

/// What went wrong, in the terms an application can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An option, route or spec is invalid; the message starts with the option's name.
    Option,
    /// The listening address is taken.
    AddrInUse,
    /// The listening address needs privileges the process lacks.
    PermissionDenied,
    /// The listening address is not one of this machine's.
    AddrNotAvailable,
    /// Binding or resolving the listening address failed otherwise.
    Listen,
    /// The server is not listening (yet, or any more).
    NotListening,
    /// The client of an exchange is gone.
    ClientGone,
    /// A request body passed its size cap.
    BodyTooLarge,
    /// A request body stopped arriving for longer than its read timeout.
    BodyTimeout,
    /// The client aborted a request body, or sent a malformed one.
    BodyAborted,
    /// A batch from the binding does not describe its payload.
    Malformed,
}

/// An error with its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// An invalid option; `message` names it.
    pub fn option(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Option, message)
    }

    /// A failure to bind or resolve `what`, kind taken from the OS error.
    pub fn listen(what: impl fmt::Display, err: &io::Error) -> Self {
        let kind = match err.kind() {
            io::ErrorKind::AddrInUse => ErrorKind::AddrInUse,
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            io::ErrorKind::AddrNotAvailable => ErrorKind::AddrNotAvailable,
            _ => ErrorKind::Listen,
        };
        Self::new(kind, format!("listen on {what}: {err}"))
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The stable code of this error's kind: Node's own code where Node has one for the same
    /// failure (`EADDRINUSE`), else `ERR_FLOODGATE_*`.
    pub fn code(&self) -> &'static str {
        match self.kind {
            ErrorKind::Option => "ERR_FLOODGATE_OPTION",
            ErrorKind::AddrInUse => "EADDRINUSE",
            ErrorKind::PermissionDenied => "EACCES",
            ErrorKind::AddrNotAvailable => "EADDRNOTAVAIL",
            ErrorKind::Listen => "ERR_FLOODGATE_LISTEN",
            ErrorKind::NotListening => "ERR_FLOODGATE_NOT_LISTENING",
            ErrorKind::ClientGone => "ERR_FLOODGATE_CLIENT_GONE",
            ErrorKind::BodyTooLarge => "ERR_FLOODGATE_BODY_TOO_LARGE",
            ErrorKind::BodyTimeout => "ERR_FLOODGATE_BODY_TIMEOUT",
            ErrorKind::BodyAborted => "ERR_FLOODGATE_BODY_ABORTED",
            ErrorKind::Malformed => "ERR_FLOODGATE_MALFORMED",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_errors_take_their_kind_from_the_os() {
        let taken = io::Error::from(io::ErrorKind::AddrInUse);
        let error = Error::listen("127.0.0.1:80", &taken);
        assert_eq!(error.kind(), ErrorKind::AddrInUse);
        assert_eq!(error.code(), "EADDRINUSE");
        let other = Error::listen("x", &io::Error::other("boom"));
        assert_eq!(other.code(), "ERR_FLOODGATE_LISTEN");
    }
}
