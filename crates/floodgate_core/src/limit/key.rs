//! Who a per-client limit counts against: the user the application named (`identify` or
//! `authenticate`), else the client's address, IPv6 grouped per /64 (one host usually owns a
//! whole /64). The one key for every per-client limit: request rates, WebSocket and event
//! stream caps, and whatever comes later, so a user id can never collide with an address.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

/// The accounting key of a client address: the address itself, or its /64 for IPv6
/// (IPv4-mapped IPv6 addresses count as their IPv4 address).
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A user, or an anonymous client's address group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    User(Arc<str>),
    Address(IpAddr),
}

impl ClientKey {
    /// The user when there is one, else the client's address group.
    pub(crate) fn new(user: Option<&str>, client: IpAddr) -> Self {
        match user {
            Some(user) => ClientKey::User(user.into()),
            None => ClientKey::Address(address_key(client)),
        }
    }
}

impl ClientKey {
    /// The user, when the key is one.
    pub(crate) fn user(&self) -> Option<&str> {
        match self {
            ClientKey::User(user) => Some(user),
            ClientKey::Address(_) => None,
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::User(user) => write!(f, "u:{user}"),
            ClientKey::Address(address) => write!(f, "a:{address}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_named_like_an_address_is_not_that_address() {
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let user = ClientKey::new(Some("10.0.0.1"), "192.0.2.9".parse().unwrap());
        let anonymous = ClientKey::new(None, client);
        assert_ne!(user, anonymous);
        assert_eq!(user.to_string(), "u:10.0.0.1");
        assert_eq!(anonymous.to_string(), "a:10.0.0.1");
    }

    #[test]
    fn ipv6_clients_group_per_64() {
        let a = ClientKey::new(None, "2001:db8:1:2::1".parse().unwrap());
        let b = ClientKey::new(None, "2001:db8:1:2:ffff::9".parse().unwrap());
        let c = ClientKey::new(None, "2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mapped = ClientKey::new(None, "::ffff:10.0.0.1".parse().unwrap());
        assert_eq!(mapped, ClientKey::new(None, "10.0.0.1".parse().unwrap()));
    }
}
