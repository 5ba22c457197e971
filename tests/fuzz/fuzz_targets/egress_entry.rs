//! An egress allowlist entry as an operator, a manifest or an install writes it, then checked
//! against destinations and addresses derived from the same bytes.
#![no_main]

use std::net::IpAddr;

use alga_shared::egress::{Destination, Policy, Rule, is_public};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (entry, host) = text.split_once('\n').unwrap_or((text, "api.example.com"));
    let Ok(rule) = Rule::parse(entry) else { return };
    let list = [rule];
    let policy = Policy::new(&list).and("manifest", Some(&list));
    for (name, port) in [(Some(host), 443), (None, 443), (Some(host), 8080)] {
        let dest = Destination::new(name, port, 443);
        let _ = policy.may_allow(&dest);
        for addr in ["127.0.0.1", "10.1.2.3", "93.184.216.34", "::1", "2001:db8::1", "::ffff:10.0.0.1"] {
            let addr: IpAddr = addr.parse().unwrap();
            let _ = policy.check(&dest, addr);
            let _ = is_public(addr);
        }
        if let Ok(addr) = host.parse::<IpAddr>() {
            let _ = policy.check(&dest, addr);
        }
    }
});
