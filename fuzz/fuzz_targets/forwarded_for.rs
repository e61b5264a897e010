//! `trusted_proxies` entries and `X-Forwarded-For` (`http::forwarded`). The first input line is
//! a comma-separated proxy list for `TrustedProxies::parse`, the remaining lines are header
//! values. Properties: an untrusted peer is always the client; otherwise the client is the peer
//! or an address written in one of the headers.
#![no_main]

use std::net::IpAddr;

use hallmark_server::http::forwarded::{client_addr, TrustedProxies};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (first, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(first) = std::str::from_utf8(first) else {
        return;
    };
    let Ok(trusted) = TrustedProxies::parse(first.split(',')) else {
        return;
    };
    let headers: Vec<&[u8]> = rest.split(|&b| b == b'\n').collect();
    for peer in [
        "10.0.0.1",
        "192.0.2.7",
        "::1",
        "::ffff:10.1.2.3",
        "2001:db8::1",
    ] {
        let peer: IpAddr = peer.parse().expect("literal address");
        let client = client_addr(peer, headers.iter().copied(), &trusted);
        if !trusted.contains(peer) {
            assert_eq!(client, peer.to_canonical());
            continue;
        }
        let written = headers
            .iter()
            .flat_map(|h| h.split(|&b| b == b','))
            .filter_map(|e| std::str::from_utf8(e).ok())
            .filter_map(|e| e.trim_matches([' ', '\t']).parse::<IpAddr>().ok())
            .any(|ip| ip.to_canonical() == client);
        assert!(
            client == peer.to_canonical() || written,
            "invented {client}"
        );
    }
});
