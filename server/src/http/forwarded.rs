//! The client's address behind reverse proxies: `X-Forwarded-For` is believed only as far as it
//! was written by proxies the operator trusts (`trusted_proxies`), read from the right.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// Most `X-Forwarded-For` entries we read, from the right: a proxy chain is never this long, and
/// what a client pads on the left is never read.
pub const MAX_FORWARDED_ENTRIES: usize = 32;

/// The proxies whose `X-Forwarded-For` is believed. Empty (the default): none, the TCP peer is
/// always the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// A `trusted_proxies` entry that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardedError {
    /// Neither an IP address nor a CIDR block.
    #[error("trusted proxy {entry:?} is not an IP address or CIDR block")]
    ParseProxy {
        /// The entry as given.
        entry: String,
    },
    /// A `/0` block would let every client on the internet choose its own address.
    #[error("trusted proxy {entry:?} trusts every address; name the proxies' addresses or blocks")]
    TrustsEveryone {
        /// The entry as given.
        entry: String,
    },
}

impl TrustedProxies {
    /// Parse entries such as `10.0.0.0/8`, `192.0.2.7` or `::1`; the first bad one is the error.
    pub fn parse<I, S>(entries: I) -> Result<Self, ForwardedError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        entries
            .into_iter()
            .map(|e| parse_entry(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The client's address, given the TCP peer and the raw values of every `X-Forwarded-For` header
/// of the request, in order.
///
/// An untrusted peer's header is ignored: anyone can write one. Through trusted proxies, each
/// appends the address it received from, so the rightmost entry not written by a trusted proxy
/// is the client; anything left of it was supplied by the client itself and is not believed.
/// An entry that is not a bare IP address ends the walk at the last trusted hop, so garbage never
/// becomes the address; if every entry is trusted, the leftmost is the client.
pub fn client_addr<'a, I>(peer: IpAddr, forwarded_for: I, trusted: &TrustedProxies) -> IpAddr
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    // Proxies append on the right, so read from there and only as far as a chain can reach:
    // padding on the left (the client's own) costs nothing and changes nothing.
    let values: Vec<&[u8]> = forwarded_for.into_iter().collect();
    let entries = values
        .iter()
        .rev()
        .flat_map(|value| value.rsplit(|&b| b == b','))
        .take(MAX_FORWARDED_ENTRIES);
    let mut last_trusted = peer;
    for entry in entries {
        let Some(ip) = parse_hop(entry) else {
            return last_trusted;
        };
        if !trusted.contains(ip) {
            return ip;
        }
        last_trusted = ip;
    }
    last_trusted
}

/// A hop as a bare IP address; `None` for anything else (`unknown`, obfuscated ids, ports,
/// brackets, empty entries, non-ASCII).
fn parse_hop(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim_matches([' ', '\t']);
    IpAddr::from_str(text).ok().map(|ip| ip.to_canonical())
}

fn parse_entry(entry: &str) -> Result<IpNet, ForwardedError> {
    let text = entry.trim();
    let net = if text.contains('/') {
        IpNet::from_str(text).ok().map(canonical_net)
    } else {
        IpAddr::from_str(text)
            .ok()
            .map(|ip| IpNet::from(ip.to_canonical()))
    }
    .ok_or_else(|| ForwardedError::ParseProxy {
        entry: entry.to_owned(),
    })?;
    if net.prefix_len() == 0 {
        return Err(ForwardedError::TrustsEveryone {
            entry: entry.to_owned(),
        });
    }
    Ok(net)
}

/// `net` without host bits, and an IPv4-mapped IPv6 block (`::ffff:10.0.0.0/104`) as the IPv4
/// block it stands for, since addresses are compared in their canonical form.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let (Some(v4), Some(len)) = (
            v6.network().to_ipv4_mapped(),
            v6.prefix_len().checked_sub(96),
        ) {
            if let Ok(mapped) = ipnet::Ipv4Net::new(v4, len) {
                return IpNet::V4(mapped);
            }
        }
    }
    net.trunc()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(entries).unwrap()
    }

    /// The client for `peer` sending these header values.
    fn client(peer: &str, values: &[&str], t: &TrustedProxies) -> IpAddr {
        client_addr(ip(peer), values.iter().map(|v| v.as_bytes()), t)
    }

    #[test]
    fn no_trusted_proxies_means_the_peer() {
        let none = TrustedProxies::default();
        assert!(none.is_empty());
        assert_eq!(
            client("203.0.113.9", &["198.51.100.1"], &none),
            ip("203.0.113.9")
        );
        assert_eq!(
            client("127.0.0.1", &["198.51.100.1"], &none),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn an_untrusted_peer_cannot_claim_another_address() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            client("203.0.113.9", &["10.0.0.1", "198.51.100.1"], &t),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn through_a_trusted_proxy_the_forwarded_address_is_the_client() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            client("10.1.2.3", &["198.51.100.7"], &t),
            ip("198.51.100.7")
        );
        assert_eq!(
            client("10.1.2.3", &[" 198.51.100.7 "], &t),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn prepended_entries_do_not_choose_the_address() {
        // The client sent `X-Forwarded-For: 192.0.2.1, 10.9.9.9`; the proxy appended the address
        // it really saw. The rightmost untrusted entry wins, whatever was written before it.
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            client("10.1.2.3", &["192.0.2.1, 10.9.9.9, 198.51.100.7"], &t),
            ip("198.51.100.7")
        );
        assert_eq!(
            client("10.1.2.3", &["192.0.2.1", "198.51.100.7"], &t),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn a_chain_of_trusted_proxies_is_skipped() {
        let t = trusted(&["10.0.0.0/8", "192.0.2.5"]);
        assert_eq!(
            client("10.1.2.3", &["198.51.100.7, 192.0.2.5", "10.4.4.4"], &t),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn all_trusted_means_the_leftmost() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            client("10.1.2.3", &["10.0.0.7, 10.0.0.8"], &t),
            ip("10.0.0.7")
        );
    }

    #[test]
    fn garbage_stops_at_the_last_trusted_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        for bad in [
            "unknown",
            "198.51.100.7:4711",
            "[2001:db8::1]",
            "_hidden",
            "",
            "198.51.100.7 extra",
            "fe80::1%eth0",
        ] {
            // Straight behind the peer: the peer.
            assert_eq!(client("10.1.2.3", &[bad], &t), ip("10.1.2.3"), "{bad:?}");
            // Behind another trusted hop: that hop, never what lies left of the garbage.
            let header = format!("192.0.2.1, {bad}, 10.0.0.9");
            assert_eq!(
                client("10.1.2.3", &[&header], &t),
                ip("10.0.0.9"),
                "{bad:?}"
            );
        }
        assert_eq!(
            client_addr(ip("10.1.2.3"), [&b"198.51.100.\xff"[..]], &t),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn no_or_empty_header_means_the_peer() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(client("10.1.2.3", &[], &t), ip("10.1.2.3"));
        assert_eq!(client("10.1.2.3", &[""], &t), ip("10.1.2.3"));
        assert_eq!(client("10.1.2.3", &[" , "], &t), ip("10.1.2.3"));
    }

    #[test]
    fn ipv6_peers_entries_and_blocks() {
        let t = trusted(&["::1", "fd00::/8"]);
        assert_eq!(client("::1", &["2001:db8::42"], &t), ip("2001:db8::42"));
        assert_eq!(
            client("fd12::1", &["2001:db8::1, 2001:db8::42, fd00::2"], &t),
            ip("2001:db8::42")
        );
        assert_eq!(client("::1", &["198.51.100.7"], &t), ip("198.51.100.7"));
        assert_eq!(
            client("2001:db8::9", &["198.51.100.7"], &t),
            ip("2001:db8::9")
        );
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        // A dual-stack listener sees IPv4 peers as `::ffff:a.b.c.d`.
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            client("::ffff:10.1.2.3", &["::ffff:198.51.100.7"], &t),
            ip("198.51.100.7")
        );
        let mapped = trusted(&["::ffff:10.1.2.3", "::ffff:192.0.2.0/120"]);
        assert!(mapped.contains(ip("10.1.2.3")));
        assert!(mapped.contains(ip("192.0.2.200")));
        assert!(!mapped.contains(ip("192.0.3.1")));
    }

    #[test]
    fn padding_on_the_left_is_never_read() {
        let t = trusted(&["10.0.0.0/8"]);
        // The client pads 100 entries of its own; the proxy appends the real address.
        let padded = format!("{},198.51.100.9", vec!["192.0.2.1"; 100].join(","));
        assert_eq!(client("10.1.2.3", &[&padded], &t), ip("198.51.100.9"));
        let long = format!("{}, 198.51.100.9", "x".repeat(10_000));
        assert_eq!(client("10.1.2.3", &[&long], &t), ip("198.51.100.9"));
        // Over separate header lines, the last line is the nearest proxy's.
        let mut lines = vec!["192.0.2.1"; 100];
        lines.push("198.51.100.9");
        assert_eq!(client("10.1.2.3", &lines, &t), ip("198.51.100.9"));
        // A chain of trusted hops longer than we read ends at the last one read.
        let chain = vec!["10.0.0.5"; MAX_FORWARDED_ENTRIES + 5].join(",");
        assert_eq!(client("10.1.2.3", &[&chain], &t), ip("10.0.0.5"));
    }

    #[test]
    fn proxies_parse_as_addresses_and_blocks() {
        let t = trusted(&[
            "10.0.0.0/8",
            "192.0.2.7",
            " ::1 ",
            "2001:db8::/32",
            "172.16.5.9/12",
        ]);
        for inside in [
            "10.255.0.1",
            "192.0.2.7",
            "::1",
            "2001:db8:ffff::1",
            "172.31.0.1",
        ] {
            assert!(t.contains(ip(inside)), "{inside}");
        }
        for outside in ["11.0.0.1", "192.0.2.8", "::2", "2001:db9::1", "172.32.0.1"] {
            assert!(!t.contains(ip(outside)), "{outside}");
        }
        for bad in [
            "",
            "nope",
            "10.0.0.0/33",
            "10.0.0.1:80",
            "::1/129",
            "10.0.0/8",
        ] {
            let e = TrustedProxies::parse([bad]).unwrap_err();
            assert!(matches!(e, ForwardedError::ParseProxy { .. }), "{bad:?}");
        }
        for everyone in ["0.0.0.0/0", "::/0"] {
            let e = TrustedProxies::parse([everyone]).unwrap_err();
            assert!(matches!(e, ForwardedError::TrustsEveryone { .. }));
        }
    }
}
