//! Who is calling, without `request.cf`: the socket's peer address, or what
//! a trusted reverse proxy says in `Forwarded` / `X-Forwarded-For`, and the
//! country and scheme such a proxy may add. Headers from any other peer are
//! ignored: anyone can send them.

use std::net::IpAddr;

use axum::http::HeaderMap;
use intake::door::Client;

/// `SLUICE_TRUSTED_PROXIES`: addresses and CIDR ranges (`10.0.0.0/8`,
/// `::1`) of the proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// A comma-separated list; an entry that is not an address or range is
    /// an error (a typo must not silently trust nobody, or everybody).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (addr, bits) = match entry.split_once('/') {
                Some((addr, bits)) => (addr, Some(bits)),
                None => (entry, None),
            };
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| format!("`{entry}` is not an IP address or CIDR range"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits =
                match bits {
                    None => max,
                    Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(|| {
                        format!("`{entry}` has a prefix length outside 0..={max}")
                    })?,
                };
            ranges.push((ip, bits));
        }
        Ok(Self(ranges))
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0
            .iter()
            .any(|&(range, bits)| in_range(ip, canonical(range), bits))
    }
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`, how a dual-stack socket reports an
/// IPv4 peer) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_range(ip: IpAddr, range: IpAddr, bits: u8) -> bool {
    let (a, b, width) = match (ip, range) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    if bits == 0 {
        return true;
    }
    let shift = width - u32::from(bits);
    (a >> shift) == (b >> shift)
}

/// What the door may believe about a request from `peer`.
pub struct ClientRules<'a> {
    pub proxies: &'a TrustedProxies,
    /// A header a trusted proxy sets to the client's country (`CF-IPCountry`,
    /// `CloudFront-Viewer-Country`, ...); none when not configured.
    pub country_header: Option<&'a str>,
}

impl ClientRules<'_> {
    /// The client of a request from `peer` (none in tests without a socket).
    pub fn client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Client {
        let Some(peer) = peer.map(canonical) else {
            return Client::default();
        };
        if !self.proxies.trusts(peer) {
            return Client {
                ip: Some(peer.to_string()),
                ..Client::default()
            };
        }
        let country = self
            .country_header
            .and_then(|name| header(headers, name))
            .map(|c| c.trim().to_owned())
            .filter(|c| {
                !c.is_empty() && c.len() <= 8 && c.bytes().all(|b| b.is_ascii_alphanumeric())
            });
        Client {
            ip: Some(self.forwarded_client(peer, headers).to_string()),
            geo: intake::enrich::Geo {
                country,
                ..Default::default()
            },
            ..Client::default()
        }
    }

    /// The address the nearest untrusted hop gave: the forwarding chain is
    /// read from the right (each trusted proxy appends the address it saw)
    /// and the first address no trusted proxy owns is the client. `Forwarded`
    /// wins over `X-Forwarded-For`; an entry that is no address (`unknown`,
    /// an obfuscated name) ends the walk at the last address believed.
    fn forwarded_client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let chain: Vec<String> = match all(headers, "forwarded") {
            Some(forwarded) => forwarded_for(&forwarded),
            None => all(headers, "x-forwarded-for")
                .map(|xff| xff.split(',').map(|s| s.trim().to_owned()).collect())
                .unwrap_or_default(),
        };
        let mut client = peer;
        for entry in chain.iter().rev() {
            let Some(ip) = parse_node(entry) else { break };
            client = ip;
            if !self.proxies.trusts(ip) {
                break;
            }
        }
        client
    }

    /// `(scheme, host)` the client reached: a trusted proxy's
    /// `X-Forwarded-Proto` / `X-Forwarded-Host`, else `http` and `Host`.
    pub fn scheme_and_host(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> (String, String) {
        let trusted = peer.is_some_and(|p| self.proxies.trusts(p));
        let forwarded = |name| trusted.then(|| header(headers, name)).flatten();
        let scheme = forwarded("x-forwarded-proto")
            .map(|p| {
                p.split(',')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|p| p == "http" || p == "https")
            .unwrap_or_else(|| "http".to_owned());
        let host = forwarded("x-forwarded-host")
            .or_else(|| header(headers, "host"))
            .map(|h| h.split(',').next().unwrap_or("").trim().to_owned())
            .unwrap_or_default();
        (scheme, host)
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_owned)
}

/// Every value of a header, joined with commas (as RFC 9110 allows).
fn all(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The `for=` values of a `Forwarded` header (RFC 7239), in order.
fn forwarded_for(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                .map(|(_, v)| v.trim().trim_matches('"').to_owned())
                .unwrap_or_default()
        })
        .collect()
}

/// An address of a forwarding chain: `192.0.2.1`, `192.0.2.1:4711`,
/// `2001:db8::1`, `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok().map(canonical);
    }
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().unwrap());
        }
        map
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn trusted_proxies_parse_addresses_and_ranges() {
        let p = TrustedProxies::parse(" 10.0.0.0/8, 127.0.0.1 ,fd00::/8").unwrap();
        assert!(p.trusts("10.1.2.3".parse().unwrap()));
        assert!(p.trusts("127.0.0.1".parse().unwrap()));
        assert!(
            p.trusts("::ffff:10.9.9.9".parse().unwrap()),
            "IPv4-mapped peers"
        );
        assert!(p.trusts("fd12::1".parse().unwrap()));
        assert!(!p.trusts("127.0.0.2".parse().unwrap()));
        assert!(!p.trusts("11.0.0.1".parse().unwrap()));
        assert!(TrustedProxies::parse("0.0.0.0/0")
            .unwrap()
            .trusts("8.8.8.8".parse().unwrap()));
        assert_eq!(
            TrustedProxies::parse("").unwrap(),
            TrustedProxies::default()
        );
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.local").is_err());
    }

    #[test]
    fn forwarding_headers_count_only_from_a_trusted_peer() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let rules = ClientRules {
            proxies: &proxies,
            country_header: Some("CF-IPCountry"),
        };
        let spoofed = headers(&[("x-forwarded-for", "6.6.6.6"), ("cf-ipcountry", "US")]);
        let direct = rules.client(ip("203.0.113.9"), &spoofed);
        assert_eq!(direct.ip.as_deref(), Some("203.0.113.9"));
        assert_eq!(direct.geo.country, None);

        // The client prepended a fake address; the proxy appended the real one.
        let via_proxy = headers(&[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.5"),
            ("cf-ipcountry", "DE"),
        ]);
        let c = rules.client(ip("10.0.0.2"), &via_proxy);
        assert_eq!(c.ip.as_deref(), Some("198.51.100.7"));
        assert_eq!(c.geo.country.as_deref(), Some("DE"));

        let forwarded = headers(&[
            (
                "forwarded",
                r#"for=192.0.2.60;proto=https, for="[2001:db8:cafe::17]:4711""#,
            ),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        let c = rules.client(ip("10.0.0.2"), &forwarded);
        assert_eq!(c.ip.as_deref(), Some("2001:db8:cafe::17"));

        let unknown = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(
            rules.client(ip("10.0.0.2"), &unknown).ip.as_deref(),
            Some("10.0.0.2")
        );
        let with_port = headers(&[("x-forwarded-for", "198.51.100.7:5555")]);
        assert_eq!(
            rules.client(ip("10.0.0.2"), &with_port).ip.as_deref(),
            Some("198.51.100.7")
        );
        let bad_country = headers(&[("cf-ipcountry", "<script>")]);
        assert_eq!(rules.client(ip("10.0.0.2"), &bad_country).geo.country, None);
        assert_eq!(rules.client(None, &via_proxy), Client::default());
    }

    #[test]
    fn scheme_and_host_come_from_a_trusted_proxy_or_the_request() {
        let proxies = TrustedProxies::parse("127.0.0.1").unwrap();
        let rules = ClientRules {
            proxies: &proxies,
            country_header: None,
        };
        let h = headers(&[
            ("host", "10.0.0.1:8080"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "events.example.com"),
        ]);
        assert_eq!(
            rules.scheme_and_host(ip("127.0.0.1"), &h),
            ("https".into(), "events.example.com".into())
        );
        assert_eq!(
            rules.scheme_and_host(ip("192.0.2.1"), &h),
            ("http".into(), "10.0.0.1:8080".into())
        );
    }
}
