//! Capabilities: the names a manifest asks for and an install grants (04-host-api.md).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One capability a host API needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Capability {
    ContextRead,
    SecretsGet,
    HttpFetch,
    StorageKv,
    LogEmit,
    UiProxy,
    UserRead,
    SchedulerManage,
    InvoiceManualCreate,
    ClientRead,
    ServiceRead,
    /// alga-runner addition: the `config` interface.
    ConfigRead,
    /// alga-runner addition: the `metrics` interface.
    MetricsEmit,
}

impl Capability {
    /// Every known capability, in a stable order.
    pub const ALL: [Capability; 13] = [
        Capability::ContextRead,
        Capability::SecretsGet,
        Capability::HttpFetch,
        Capability::StorageKv,
        Capability::LogEmit,
        Capability::UiProxy,
        Capability::UserRead,
        Capability::SchedulerManage,
        Capability::InvoiceManualCreate,
        Capability::ClientRead,
        Capability::ServiceRead,
        Capability::ConfigRead,
        Capability::MetricsEmit,
    ];

    /// Granted to every install whatever its manifest says.
    pub const DEFAULTS: [Capability; 5] = [
        Capability::ContextRead,
        Capability::LogEmit,
        Capability::UserRead,
        Capability::ConfigRead,
        Capability::MetricsEmit,
    ];

    /// The canonical name, `cap:` prefix included.
    pub fn name(self) -> &'static str {
        match self {
            Capability::ContextRead => "cap:context.read",
            Capability::SecretsGet => "cap:secrets.get",
            Capability::HttpFetch => "cap:http.fetch",
            Capability::StorageKv => "cap:storage.kv",
            Capability::LogEmit => "cap:log.emit",
            Capability::UiProxy => "cap:ui.proxy",
            Capability::UserRead => "cap:user.read",
            Capability::SchedulerManage => "cap:scheduler.manage",
            Capability::InvoiceManualCreate => "cap:invoice.manual.create",
            Capability::ClientRead => "cap:client.read",
            Capability::ServiceRead => "cap:service.read",
            Capability::ConfigRead => "cap:config.read",
            Capability::MetricsEmit => "cap:metrics.emit",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A capability name that is not one of [`Capability::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown capability `{0}` (known: {known})", known = known_list())]
pub struct UnknownCapability(pub String);

fn known_list() -> String {
    Capability::ALL.map(Capability::name).join(", ")
}

impl FromStr for Capability {
    type Err = UnknownCapability;

    /// Trims, lower-cases and adds the `cap:` prefix to a bare name before matching.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let trimmed = raw.trim().to_ascii_lowercase();
        let full = if trimmed.starts_with("cap:") { trimmed } else { format!("cap:{trimmed}") };
        Capability::ALL.into_iter().find(|c| c.name() == full).ok_or_else(|| UnknownCapability(raw.to_string()))
    }
}

/// A set of capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitySet(BTreeSet<Capability>);

impl CapabilitySet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn defaults() -> Self {
        Capability::DEFAULTS.into_iter().collect()
    }

    /// Parses every name; the error lists each unknown one.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, Vec<UnknownCapability>> {
        let mut set = Self::new();
        let mut bad = Vec::new();
        for name in names {
            match name.parse() {
                Ok(cap) => {
                    set.0.insert(cap);
                }
                Err(e) => bad.push(e),
            }
        }
        if bad.is_empty() { Ok(set) } else { Err(bad) }
    }

    /// The effective set of an execution: `manifest ∩ grants (∩ providers when given) ∪ defaults`.
    pub fn effective(manifest: &Self, grants: &Self, providers: Option<&Self>) -> Self {
        let mut set: BTreeSet<Capability> = manifest.0.intersection(&grants.0).copied().collect();
        if let Some(providers) = providers {
            set.retain(|c| providers.0.contains(c));
        }
        set.extend(Capability::DEFAULTS);
        Self(set)
    }

    pub fn contains(&self, cap: Capability) -> bool {
        self.0.contains(&cap)
    }

    pub fn insert(&mut self, cap: Capability) {
        self.0.insert(cap);
    }

    pub fn is_subset(&self, other: &Self) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn iter(&self) -> impl Iterator<Item = Capability> + '_ {
        self.0.iter().copied()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.iter().map(Capability::name).collect()
    }
}

impl FromIterator<Capability> for CapabilitySet {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised() {
        assert_eq!(" HTTP.fetch ".parse::<Capability>(), Ok(Capability::HttpFetch));
        assert_eq!("cap:storage.kv".parse::<Capability>(), Ok(Capability::StorageKv));
        assert_eq!("Cap:Log.Emit".parse::<Capability>(), Ok(Capability::LogEmit));
        let err = "cap:root".parse::<Capability>().unwrap_err();
        assert!(err.to_string().contains("unknown capability `cap:root`"), "{err}");
    }

    #[test]
    fn every_name_round_trips() {
        for cap in Capability::ALL {
            assert_eq!(cap.name().parse::<Capability>(), Ok(cap));
        }
    }

    #[test]
    fn effective_set_intersects_and_adds_defaults() {
        let manifest = CapabilitySet::parse(["http.fetch", "storage.kv", "secrets.get"]).unwrap();
        let grants = CapabilitySet::parse(["http.fetch", "storage.kv", "ui.proxy"]).unwrap();
        let eff = CapabilitySet::effective(&manifest, &grants, None);
        assert!(eff.contains(Capability::HttpFetch));
        assert!(eff.contains(Capability::StorageKv));
        assert!(!eff.contains(Capability::SecretsGet), "not granted");
        assert!(!eff.contains(Capability::UiProxy), "not in the manifest");
        assert!(eff.contains(Capability::ContextRead), "default");

        let providers = CapabilitySet::parse(["storage.kv"]).unwrap();
        let eff = CapabilitySet::effective(&manifest, &grants, Some(&providers));
        assert!(!eff.contains(Capability::HttpFetch), "providers narrow the set");
        assert!(eff.contains(Capability::StorageKv));
        assert!(eff.contains(Capability::LogEmit));
    }

    #[test]
    fn parse_reports_every_unknown_name() {
        let err = CapabilitySet::parse(["a", "http.fetch", "b"]).unwrap_err();
        assert_eq!(err.len(), 2);
    }
}
