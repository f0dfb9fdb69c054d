//! The client address a request comes from, for login throttling.

use std::net::IpAddr;

use poem::Request;

/// The TCP peer's address; or, when the peer is a trusted proxy, the address
/// `X-Forwarded-For` names: walking the list from the right (the hop nearest
/// to allot), the first address that is not itself a trusted proxy. A client
/// cannot escape throttling by sending the header itself: from an untrusted
/// peer it is ignored, and entries it prepends sit left of those the proxies
/// appended.
pub fn client_address(req: &Request, trusted_proxies: &[IpAddr]) -> String {
    let Some(peer) = req.remote_addr().as_socket_addr().map(|socket| socket.ip()) else {
        return req.remote_addr().to_string();
    };
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim);
    resolve(peer, forwarded, trusted_proxies).to_string()
}

fn resolve<'a>(
    peer: IpAddr,
    forwarded: impl DoubleEndedIterator<Item = &'a str>,
    trusted_proxies: &[IpAddr],
) -> IpAddr {
    if !trusted_proxies.contains(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded.rev() {
        match hop.parse::<IpAddr>() {
            Ok(address) => {
                client = address;
                if !trusted_proxies.contains(&address) {
                    break;
                }
            }
            // Unparsable: nothing left of it can be trusted.
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn hops(list: &str) -> impl DoubleEndedIterator<Item = &str> {
        list.split(',').map(str::trim).filter(|hop| !hop.is_empty())
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let client = resolve(ip("203.0.113.7"), hops("198.51.100.1"), &[]);
        assert_eq!(client, ip("203.0.113.7"));
    }

    #[test]
    fn a_trusted_proxy_names_the_client_nearest_to_it() {
        let proxies = [ip("10.0.0.1")];
        let spoofed = resolve(ip("10.0.0.1"), hops("6.6.6.6, 198.51.100.1"), &proxies);
        assert_eq!(spoofed, ip("198.51.100.1"));
        let chain = resolve(ip("10.0.0.1"), hops("198.51.100.1, 10.0.0.1"), &proxies);
        assert_eq!(chain, ip("198.51.100.1"));
        assert_eq!(resolve(ip("10.0.0.1"), hops(""), &proxies), ip("10.0.0.1"));
        let garbage = resolve(ip("10.0.0.1"), hops("nonsense"), &proxies);
        assert_eq!(garbage, ip("10.0.0.1"));
    }
}
