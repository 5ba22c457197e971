//! The egress policy of `http.fetch` (04-host-api.md): which (host, port, address) a guest may
//! reach. Deny by default. The effective allowlist is the intersection of the lists that apply —
//! the operator's (`EXT_EGRESS_ALLOWLIST`, always), the manifest's `egress` and the install's
//! `egress_allowlist` (each when present; in host-registry mode also a per-extension operator
//! list and the envelope's) — so a destination must match an entry of every list. The entry
//! syntax is the same in all: `host`, `*.domain`, `host:port`, an IP, `IP:port`, `[v6]:port`, or a
//! CIDR. An entry without a port allows the scheme's default port (80/443) only.
//!
//! Names and addresses: a URL's host name must match a name entry (`host`, `*.domain`) of every
//! list before it is resolved, so a guest cannot make the supervisor look up a name no list names
//! (a DNS side channel). An IP or CIDR entry matches IP-literal URLs, and vets the addresses a
//! listed name resolves to, but never opens a name by itself.
//!
//! SSRF: after DNS resolution, loopback, private, link-local, multicast, unspecified (and the
//! other non-public ranges below) are refused unless every list names that address or a CIDR
//! holding it explicitly — a host name entry never opens an internal address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What an entry matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A host name, lower-case, without a trailing dot.
    Host(String),
    /// `*.domain`: any name below `domain` (not `domain` itself).
    Below(String),
    Ip(IpAddr),
    Cidr(IpAddr, u8),
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    target: Target,
    port: Option<u16>,
}

/// A list that failed to parse: which entry and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("egress entry `{entry}`: {reason}")]
pub struct RuleError {
    pub entry: String,
    pub reason: &'static str,
}

fn normalize_host(h: &str) -> String {
    h.trim_end_matches('.').to_ascii_lowercase()
}

impl Rule {
    pub fn parse(entry: &str) -> Result<Rule, RuleError> {
        let bad = |reason| Err(RuleError { entry: entry.to_string(), reason });
        let e = entry.trim();
        if e.is_empty() || e.contains("://") || e.chars().any(char::is_whitespace) {
            return bad("must be a host, `*.domain`, `host:port`, an IP, `IP:port`, `[v6]:port` or a CIDR");
        }
        if let Some((ip, prefix)) = e.split_once('/') {
            let Ok(ip) = ip.parse::<IpAddr>() else { return bad("a CIDR must be an IP address, `/`, and a prefix") };
            let max = if ip.is_ipv4() { 32 } else { 128 };
            return match prefix.parse::<u8>() {
                Ok(p) if p <= max => Ok(Rule { target: Target::Cidr(ip, p), port: None }),
                _ => bad("the CIDR prefix length is out of range"),
            };
        }
        if let Ok(ip) = e.parse::<IpAddr>() {
            return Ok(Rule { target: Target::Ip(ip), port: None });
        }
        if let Some(rest) = e.strip_prefix('[') {
            let Some((ip, port)) = rest.split_once("]:") else {
                return bad("write an IPv6 with a port as `[v6]:port`");
            };
            let (Ok(ip), Ok(port)) = (ip.parse::<Ipv6Addr>(), port.parse::<u16>()) else {
                return bad("write an IPv6 with a port as `[v6]:port`");
            };
            return Ok(Rule { target: Target::Ip(IpAddr::V6(ip)), port: Some(port) });
        }
        let (host, port) = match e.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(p) if p > 0 => (h, Some(p)),
                _ => return bad("the port must be a number from 1 to 65535"),
            },
            None => (e, None),
        };
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok(Rule { target: Target::Ip(IpAddr::V4(ip)), port });
        }
        let (below, name) = match host.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, host),
        };
        let valid_label = |l: &str| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let name = normalize_host(name);
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return bad("not a valid host name");
        }
        let target = if below { Target::Below(name) } else { Target::Host(name) };
        Ok(Rule { target, port })
    }

    /// Parses a whole list, naming the first bad entry.
    pub fn parse_list<S: AsRef<str>>(entries: &[S]) -> Result<Vec<Rule>, RuleError> {
        entries.iter().map(|e| Rule::parse(e.as_ref())).collect()
    }

    fn port_ok(&self, port: u16, default_port: u16) -> bool {
        self.port.unwrap_or(default_port) == port
    }

    /// Whether the entry names `addr` by address (an IP or a CIDR): the only kind of entry that
    /// may open a non-public address.
    fn names_address(&self, addr: IpAddr) -> bool {
        match self.target {
            Target::Ip(ip) => canonical(ip) == canonical(addr),
            Target::Cidr(net, prefix) => match (net, canonical(net)) {
                // An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is the IPv4 network of its
                // last 32 bits; a prefix inside the mapping's first 96 bits covers all of IPv4.
                (IpAddr::V6(_), v4 @ IpAddr::V4(_)) => in_cidr(canonical(addr), v4, prefix.saturating_sub(96)),
                (_, net) => in_cidr(canonical(addr), net, prefix),
            },
            Target::Host(_) | Target::Below(_) => false,
        }
    }

    /// Whether this entry admits the destination before resolution: a name entry the URL's
    /// host name matches, or an address entry for an IP-literal URL (its address is checked
    /// by [`Rule::allows`]).
    fn admits(&self, dest: &Destination) -> bool {
        if !self.port_ok(dest.port, dest.default_port) {
            return false;
        }
        match (&self.target, dest.name.as_deref()) {
            (Target::Host(name), Some(n)) => n == name,
            (Target::Below(domain), Some(n)) => {
                n.len() > domain.len() + 1
                    && n.ends_with(domain.as_str())
                    && n.as_bytes()[n.len() - domain.len() - 1] == b'.'
            }
            (Target::Host(_) | Target::Below(_), None) => false,
            (Target::Ip(_) | Target::Cidr(..), name) => name.is_none(),
        }
    }

    /// Whether this entry allows connecting to `addr` for the destination: a name entry for a
    /// name it matches (any address; internal ones are vetted apart), an address entry for an
    /// IP-literal URL of that address.
    fn allows(&self, dest: &Destination, addr: IpAddr) -> bool {
        self.admits(dest) && (dest.name.is_some() || self.names_address(addr))
    }
}

/// What a URL asks to reach.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The host name (lower-case), or `None` when the URL names an IP literal.
    pub name: Option<String>,
    pub port: u16,
    /// 80 for http, 443 for https.
    pub default_port: u16,
}

impl Destination {
    /// `name`: the URL's host name, or `None` when it is an IP literal.
    pub fn new(name: Option<&str>, port: u16, default_port: u16) -> Self {
        Destination { name: name.map(normalize_host), port, default_port }
    }
}

/// One list of an execution's policy, named for the refusal that cites it.
#[derive(Debug, Clone, Copy)]
pub struct List<'a> {
    /// Where the list comes from (`operator`, `manifest`, `install`, …).
    pub name: &'static str,
    pub rules: &'a [Rule],
}

/// The lists of an execution: the operator's, then each other list that applies (a list that
/// does not apply restricts nothing; an empty one allows nothing).
#[derive(Debug, Clone, Default)]
pub struct Policy<'a> {
    pub lists: Vec<List<'a>>,
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No entry of some list matches.
    NotListed,
    /// A non-public address that not every list names explicitly.
    InternalAddress,
}

impl<'a> Policy<'a> {
    /// The operator's list alone.
    pub fn new(operator: &'a [Rule]) -> Self {
        Policy { lists: vec![List { name: "operator", rules: operator }] }
    }

    /// Adds the list `name` when it applies (`Some`).
    pub fn and(mut self, name: &'static str, rules: Option<&'a [Rule]>) -> Self {
        self.lists.extend(rules.map(|rules| List { name, rules }));
        self
    }

    fn lists(&self) -> impl Iterator<Item = &'a [Rule]> + '_ {
        self.lists.iter().map(|l| l.rules)
    }

    /// Whether the destination may be resolved at all: every list has a name entry matching its
    /// host name (or, for an IP-literal URL, an address entry on its port). Decided before any
    /// DNS lookup, so no name a list does not name is ever looked up.
    pub fn may_allow(&self, dest: &Destination) -> bool {
        self.refusing_list(dest).is_none()
    }

    /// The first list with no entry admitting the destination (what a refusal names).
    pub fn refusing_list(&self, dest: &Destination) -> Option<&'static str> {
        self.lists.iter().find(|l| !l.rules.iter().any(|r| r.admits(dest))).map(|l| l.name)
    }

    /// The first list with no entry allowing this resolved address.
    pub fn refusing_list_for(&self, dest: &Destination, addr: IpAddr) -> Option<&'static str> {
        self.lists.iter().find(|l| !l.rules.iter().any(|r| r.allows(dest, addr))).map(|l| l.name)
    }

    /// Decides one resolved address.
    pub fn check(&self, dest: &Destination, addr: IpAddr) -> Result<(), Refusal> {
        if !self.lists().all(|list| list.iter().any(|r| r.allows(dest, addr))) {
            return Err(Refusal::NotListed);
        }
        if !is_public(addr)
            && !self
                .lists()
                .all(|list| list.iter().any(|r| r.port_ok(dest.port, dest.default_port) && r.names_address(addr)))
        {
            return Err(Refusal::InternalAddress);
        }
        Ok(())
    }
}

/// An IPv4-mapped IPv6 address is its IPv4 address (`::ffff:127.0.0.1` is loopback).
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// An address range (`10.0.0.0/8`, `::1/128`, or one address), e.g. a trusted source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Network {
    /// Parses `IP/prefix` or a bare IP; `None` when it is neither.
    pub fn parse(s: &str) -> Option<Network> {
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Network { addr: canonical(ip), prefix })
    }

    /// Whether `addr` (an IPv4-mapped IPv6 address counts as its IPv4 address) is in the range.
    pub fn contains(&self, addr: IpAddr) -> bool {
        in_cidr(canonical(addr), self.addr, self.prefix)
    }
}

fn in_cidr(addr: IpAddr, net: IpAddr, prefix: u8) -> bool {
    // Parsing bounds the prefix by the family; a longer one never reaches the shifts below.
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix.min(128))) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Whether `addr` is a public unicast address. Everything else — loopback, private (RFC 1918,
/// unique local), link-local, multicast, unspecified, broadcast, shared (CGNAT), documentation,
/// benchmarking and reserved ranges — is internal.
pub fn is_public(addr: IpAddr) -> bool {
    match canonical(addr) {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || o[0] >= 240)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x0064 && s[1] == 0xff9b)
                // ::/96, IPv4-compatible (deprecated): the last 32 bits are an IPv4 address.
                || s[..6] == [0; 6]
                // fec0::/10, site-local (deprecated, still routed internally by some stacks).
                || (s[0] & 0xffc0) == 0xfec0
                // 2002::/16, 6to4: relays tunnel to the embedded IPv4 address.
                || s[0] == 0x2002
                // 100::/64, discard-only.
                || s[..4] == [0x0100, 0, 0, 0]
                // 2001::/23, IETF protocol assignments (Teredo 2001::/32 among them).
                || (s[0] == 0x2001 && s[1] < 0x0200))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_mapped_network_keeps_its_prefix_within_ipv4() {
        // Found by the egress_entry fuzz target: the mapped network became IPv4 with its IPv6
        // prefix (110), and the mask's shift overflowed.
        let rule = Rule::parse("::ffff:10.0.0.0/110").unwrap();
        let dest = Destination::new(None, 443, 443);
        let policy = Policy::new(std::slice::from_ref(&rule)).and("manifest", Some(std::slice::from_ref(&rule)));
        // The path that panicked: it must answer, whatever the answer.
        let _ = policy.check(&dest, "10.0.0.1".parse().unwrap());
        assert!(in_cidr("10.3.0.1".parse().unwrap(), "10.0.0.0".parse().unwrap(), 110u8.saturating_sub(96)));
        assert!(!in_cidr("10.4.0.1".parse().unwrap(), "10.0.0.0".parse().unwrap(), 110u8.saturating_sub(96)));
    }

    fn dest(name: Option<&str>, port: u16) -> Destination {
        Destination { name: name.map(str::to_string), port, default_port: 443 }
    }

    /// The same list three times (leaked: a test's lists live as long as the test binary).
    fn policy(all: &[&str]) -> Policy<'static> {
        let list: &'static [Rule] = Vec::leak(Rule::parse_list(all).unwrap());
        Policy::new(list).and("manifest", Some(list)).and("install", Some(list))
    }

    const PUBLIC: IpAddr = IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34));

    #[test]
    fn networks() {
        let n = Network::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.2.3".parse().unwrap()), "a mapped address is its IPv4 address");
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(Network::parse("127.0.0.1").unwrap().contains("127.0.0.1".parse().unwrap()));
        assert!(!Network::parse("127.0.0.1").unwrap().contains("127.0.0.2".parse().unwrap()));
        assert!(Network::parse("::/0").unwrap().contains("2001:db8::1".parse().unwrap()));
        for bad in ["", "10.0.0.0/33", "example.com", "10.0.0.0/x", "::/129"] {
            assert_eq!(Network::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn entry_syntax() {
        for ok in [
            "api.example.com",
            "*.example.org",
            "api.example.com:8443",
            "10.1.2.3",
            "10.1.2.3:80",
            "[::1]:8080",
            "::1",
            "10.0.0.0/8",
            "fd00::/8",
        ] {
            assert!(Rule::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "http://x.com",
            "x.com:0",
            "x.com:99999",
            "10.0.0.0/33",
            "[::1]",
            "bad host",
            "a..b",
            "*.",
            "x.com:abc",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_ports_and_wildcards() {
        let p = policy(&["api.example.com", "*.example.org", "svc.example.net:8443"]);
        assert_eq!(p.check(&dest(Some("api.example.com"), 443), PUBLIC), Ok(()));
        assert_eq!(p.check(&dest(Some("api.example.com"), 8443), PUBLIC), Err(Refusal::NotListed), "default port only");
        assert_eq!(p.check(&dest(Some("a.b.example.org"), 443), PUBLIC), Ok(()));
        assert_eq!(p.check(&dest(Some("example.org"), 443), PUBLIC), Err(Refusal::NotListed), "the apex is not below");
        assert_eq!(p.check(&dest(Some("evilexample.org"), 443), PUBLIC), Err(Refusal::NotListed));
        assert_eq!(p.check(&dest(Some("svc.example.net"), 8443), PUBLIC), Ok(()));
        assert_eq!(p.check(&dest(Some("other.com"), 443), PUBLIC), Err(Refusal::NotListed));
    }

    #[test]
    fn the_lists_intersect_and_empty_allows_nothing() {
        let both: &'static [Rule] = Vec::leak(Rule::parse_list(&["api.example.com", "other.example.com"]).unwrap());
        let one: &'static [Rule] = Vec::leak(Rule::parse_list(&["api.example.com"]).unwrap());
        let p = Policy::new(both).and("manifest", Some(both)).and("install", Some(one));
        assert_eq!(p.check(&dest(Some("other.example.com"), 443), PUBLIC), Err(Refusal::NotListed));
        assert_eq!(p.refusing_list(&dest(Some("other.example.com"), 443)), Some("install"), "names the list");
        assert_eq!(p.check(&dest(Some("api.example.com"), 443), PUBLIC), Ok(()));
        let p = Policy::new(both).and("manifest", Some(both)).and("install", None);
        assert_eq!(p.check(&dest(Some("other.example.com"), 443), PUBLIC), Ok(()), "no install restriction");
        let p = Policy::new(both).and("manifest", None);
        assert_eq!(p.check(&dest(Some("other.example.com"), 443), PUBLIC), Ok(()), "no manifest list");
        let p = Policy::new(&[]).and("manifest", Some(both));
        assert_eq!(
            p.check(&dest(Some("api.example.com"), 443), PUBLIC),
            Err(Refusal::NotListed),
            "empty operator list"
        );
        assert_eq!(p.refusing_list(&dest(Some("api.example.com"), 443)), Some("operator"));
    }

    #[test]
    fn internal_addresses_need_an_explicit_address_entry() {
        let by_name = policy(&["internal.example.com"]);
        for addr in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fd12::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
        ] {
            let a: IpAddr = addr.parse().unwrap();
            assert_eq!(
                by_name.check(&dest(Some("internal.example.com"), 443), a),
                Err(Refusal::InternalAddress),
                "{addr}"
            );
        }
        let loopback = policy(&["127.0.0.1:8080"]);
        assert_eq!(loopback.check(&dest(None, 8080), "127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(loopback.check(&dest(None, 8081), "127.0.0.1".parse().unwrap()), Err(Refusal::NotListed));
        assert_eq!(loopback.check(&dest(None, 8080), "127.0.0.2".parse().unwrap()), Err(Refusal::NotListed));
        let cidr = policy(&["10.0.0.0/8"]);
        assert_eq!(cidr.check(&dest(None, 443), "10.9.9.9".parse().unwrap()), Ok(()));
        assert_eq!(cidr.check(&dest(None, 443), "11.0.0.1".parse().unwrap()), Err(Refusal::NotListed));
        // A host name plus a CIDR naming its internal address: allowed.
        let mixed = policy(&["db.internal", "10.0.0.0/8"]);
        assert_eq!(mixed.check(&dest(Some("db.internal"), 443), "10.0.0.5".parse().unwrap()), Ok(()));
    }

    #[test]
    fn an_address_entry_never_opens_a_name() {
        // Only IP and CIDR entries: no name may be resolved, whatever it would resolve to.
        let addresses = policy(&["0.0.0.0/0", "93.184.216.34", "::/0"]);
        for name in ["exfil.attacker.example", "api.example.com"] {
            assert!(!addresses.may_allow(&dest(Some(name), 443)), "{name} must not be resolved");
            assert_eq!(addresses.check(&dest(Some(name), 443), PUBLIC), Err(Refusal::NotListed), "{name}");
        }
        assert!(addresses.may_allow(&dest(None, 443)), "an IP-literal URL is decided by its address");
        assert_eq!(addresses.check(&dest(None, 443), PUBLIC), Ok(()));
        // A name entry beside them opens that name only.
        let mixed = policy(&["api.example.com", "10.0.0.0/8"]);
        assert!(mixed.may_allow(&dest(Some("api.example.com"), 443)));
        assert!(!mixed.may_allow(&dest(Some("other.example.com"), 443)));
        assert!(!mixed.may_allow(&dest(Some("api.example.com"), 8443)), "on its port only");
        // A name entry does not open IP-literal URLs.
        assert!(!policy(&["api.example.com"]).may_allow(&dest(None, 443)));
    }

    #[test]
    fn special_purpose_v6_ranges_are_internal() {
        for addr in
            ["::7f00:1", "::a00:1", "fec0::1", "2002:7f00:1::1", "100::1", "2001::1", "2001:1ff::1", "2001:db8::1"]
        {
            assert!(!is_public(addr.parse().unwrap()), "{addr}");
        }
        for addr in ["2001:4860:4860::8888", "2606:4700::1111", "2a00:1450::1"] {
            assert!(is_public(addr.parse().unwrap()), "{addr}");
        }
    }
}
