//! Manifest v2 (`manifest.json` in a bundle; 03-bundles.md). Validation reports every error at
//! once, each with its JSON path, so a publisher fixes them all in one round.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::capability::{Capability, CapabilitySet};

/// Where the component is when the manifest does not say.
pub const DEFAULT_ENTRY: &str = "dist/main.wasm";

/// One HTTP endpoint the extension serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub method: String,
    pub path: String,
    pub handler: String,
}

/// One event subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSubscription {
    pub topic: String,
    pub handler: String,
}

/// The extension's iframe UI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ui {
    /// Always `iframe`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Entry HTML, relative to `ui/`.
    pub entry: String,
    /// The optional app-menu label.
    pub app_menu_label: Option<String>,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub publisher: String,
    pub version: String,
    pub runtime: String,
    /// Normalised (`cap:` prefixed) capabilities.
    pub capabilities: CapabilitySet,
    pub endpoints: Vec<Endpoint>,
    pub events: Vec<EventSubscription>,
    /// `None` when the manifest has no `egress` field: it then adds no list of its own (the
    /// operator's and the install's still bound `http.fetch`, deny by default). `Some(list)`
    /// bounds it, even when empty.
    pub egress: Option<Vec<String>>,
    pub ui: Option<Ui>,
    /// Path of the component inside the bundle.
    pub entry: String,
    pub assets: Vec<String>,
    pub sbom: Option<String>,
    /// Fields neither this runner nor Alga's manifest schema knows: accepted (Alga's schema
    /// strips them) and reported in the publish answer's `warnings`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<FieldError>,
}

impl Manifest {
    /// True when the manifest needs a component (it serves endpoints or events).
    pub fn needs_component(&self) -> bool {
        !self.endpoints.is_empty() || !self.events.is_empty()
    }
}

/// One thing wrong with a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// JSON path of the field, e.g. `$.api.endpoints[1].method`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every error of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid manifest: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ManifestErrors(pub Vec<FieldError>);

const TOP_LEVEL: &[&str] = &[
    "name",
    "publisher",
    "version",
    "runtime",
    "capabilities",
    "api",
    "events",
    "egress",
    "ui",
    "entry",
    "precompiled",
    "assets",
    "sbom",
    // Fields Alga's manifests carry that this runner does not use; accepted and ignored.
    "displayName",
    "description",
    "$schema",
    "icon",
    "homepage",
    "repository",
    "license",
    "author",
    "keywords",
    "tags",
];
/// Keys of an `api.endpoints[]` item this runner knows; Alga's `schedulable` and
/// `description` are accepted and ignored.
const ENDPOINT_KEYS: &[&str] = &["method", "path", "handler", "schedulable", "description"];
/// Keys of `ui` this runner knows; `routes` (Alga's) is accepted and ignored, and so is every
/// `ui.hooks` entry other than `appMenu` (`clientPortalMenu`, …: Alga's schema accepts any).
const UI_KEYS: &[&str] = &["type", "entry", "hooks", "routes"];
/// Keys of an `events[]` item.
const EVENT_KEYS: &[&str] = &["topic", "handler", "description"];
const RUNTIMES: &[&str] = &["wasm-js@1", "wasm32-wasi@1"];
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

struct Checker {
    errors: Vec<FieldError>,
    warnings: Vec<FieldError>,
}

impl Checker {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError { path: path.into(), message: message.into() });
    }

    /// Warns about every key of `obj` not in `known` (accepted, ignored).
    fn unknown_keys(&mut self, obj: &Map<String, Value>, known: &[&str], path: &str) {
        for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
            self.warnings.push(FieldError {
                path: format!("{path}.{key}"),
                message: "unknown field, ignored (neither alga-runner nor Alga's manifest schema knows it)".into(),
            });
        }
    }

    fn string(&mut self, obj: &Map<String, Value>, key: &str, path: &str, required: bool) -> Option<String> {
        match obj.get(key) {
            None | Some(Value::Null) if required => {
                self.err(path, "is required");
                None
            }
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.err(path, format!("must be a string, found {}", kind(other)));
                None
            }
        }
    }

    fn strings(&mut self, obj: &Map<String, Value>, key: &str, path: &str) -> Vec<String> {
        match obj.get(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v {
                    Value::String(s) => Some(s.clone()),
                    other => {
                        self.err(format!("{path}[{i}]"), format!("must be a string, found {}", kind(other)));
                        None
                    }
                })
                .collect(),
            Some(other) => {
                self.err(path, format!("must be an array of strings, found {}", kind(other)));
                Vec::new()
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn valid_name(name: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 128 && labels.len() >= 2 && labels.iter().all(|l| label(l))
}

/// Checks an endpoint path: starts with `/`, no whitespace, no `..`, `:name` parameters.
fn endpoint_path_problem(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        return Some("must start with `/`");
    }
    if path.chars().any(char::is_whitespace) {
        return Some("must not contain whitespace");
    }
    if path.split('/').any(|s| s == ".." || s == ".") {
        return Some("must not contain `.` or `..` segments");
    }
    if path.split('/').any(|s| {
        s.starts_with(':') && (s.len() == 1 || !s[1..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    }) {
        return Some("a `:name` parameter needs a name of letters, digits or `_`");
    }
    None
}

/// Checks an egress entry: a host, `*.domain`, `host:port`, an IP, `IP:port`, `[v6]:port` or a
/// CIDR — the one parser of [`crate::egress::Rule`], so what validates is what is enforced.
pub fn egress_problem(entry: &str) -> Option<&'static str> {
    crate::egress::Rule::parse(entry).err().map(|e| e.reason)
}

/// A strict version close to what was written: `0.3.*` → `0.3.0`, `v1.2` → `1.2.0`.
fn semver_example(written: &str) -> String {
    let mut parts: Vec<u64> = written
        .trim_start_matches(['v', 'V', '^', '~', '=', '>', '<', ' '])
        .split('.')
        .map_while(|p| p.parse().ok())
        .take(3)
        .collect();
    parts.resize(3, 0);
    format!("{}.{}.{}", parts[0], parts[1], parts[2])
}

/// A relative path inside the bundle: no leading `/`, no `..`, no empty or hidden segment.
pub fn bundle_path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("must not be empty");
    }
    if path.starts_with('/') {
        return Some("must be relative");
    }
    if path.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Some("must not contain empty, `.` or `..` segments");
    }
    if path.split('/').any(|s| s.starts_with('.')) {
        return Some("must not contain hidden (`.`-prefixed) segments");
    }
    None
}

/// Parses and validates `manifest.json`. `files` are the paths in the bundle (to check that
/// referenced files exist); pass `None` to skip those checks.
pub fn parse(bytes: &[u8], files: Option<&BTreeSet<String>>) -> Result<Manifest, ManifestErrors> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ManifestErrors(vec![FieldError { path: "$".into(), message: format!("not valid JSON: {e}") }]))?;
    let Value::Object(obj) = value else {
        return Err(ManifestErrors(vec![FieldError { path: "$".into(), message: "must be a JSON object".into() }]));
    };
    let mut c = Checker { errors: Vec::new(), warnings: Vec::new() };
    c.unknown_keys(&obj, TOP_LEVEL, "$");

    let name = c.string(&obj, "name", "$.name", true).unwrap_or_default();
    if !name.is_empty() && !valid_name(&name) {
        c.err(
            "$.name",
            "must be a lowercase reverse-domain name such as `com.example.my-extension` (≤ 128 characters)",
        );
    }
    let publisher = c.string(&obj, "publisher", "$.publisher", true).unwrap_or_default();
    if obj.contains_key("publisher") && !(1..=128).contains(&publisher.chars().count()) {
        c.err("$.publisher", "must be 1 to 128 characters");
    }
    let version = c.string(&obj, "version", "$.version", true).unwrap_or_default();
    if !version.is_empty() && semver::Version::parse(&version).is_err() {
        // Alga's registry refuses these too (its schema's version is strict semver).
        c.err(
            "$.version",
            format!(
                "`{version}` is not a semantic version: write MAJOR.MINOR.PATCH, e.g. `{}` (ranges and \
                 wildcards such as `0.3.*` name no single version)",
                semver_example(&version)
            ),
        );
    }
    let runtime = c.string(&obj, "runtime", "$.runtime", true).unwrap_or_default();
    if !runtime.is_empty() && !RUNTIMES.contains(&runtime.as_str()) {
        c.err("$.runtime", format!("must be one of {}", RUNTIMES.join(", ")));
    }

    let mut capabilities = CapabilitySet::new();
    for (i, cap) in c.strings(&obj, "capabilities", "$.capabilities").iter().enumerate() {
        match cap.parse::<Capability>() {
            Ok(cap) => capabilities.insert(cap),
            Err(e) => c.err(format!("$.capabilities[{i}]"), e.to_string()),
        }
    }

    let mut endpoints = Vec::new();
    match obj.get("api") {
        None | Some(Value::Null) => {}
        Some(Value::Object(api)) => match api.get("endpoints") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                let mut seen = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    let path = format!("$.api.endpoints[{i}]");
                    let Value::Object(e) = item else {
                        c.err(&path, format!("must be an object, found {}", kind(item)));
                        continue;
                    };
                    let method = c.string(e, "method", &format!("{path}.method"), true).unwrap_or_default();
                    if !method.is_empty() && !METHODS.contains(&method.as_str()) {
                        c.err(format!("{path}.method"), format!("must be one of {}", METHODS.join(", ")));
                    }
                    let p = c.string(e, "path", &format!("{path}.path"), true).unwrap_or_default();
                    if e.contains_key("path")
                        && let Some(problem) = endpoint_path_problem(&p)
                    {
                        c.err(format!("{path}.path"), problem);
                    }
                    let handler = c.string(e, "handler", &format!("{path}.handler"), true).unwrap_or_default();
                    if e.get("handler").is_some_and(Value::is_string) && handler.trim().is_empty() {
                        c.err(format!("{path}.handler"), "must not be empty");
                    }
                    c.unknown_keys(e, ENDPOINT_KEYS, &path);
                    if !seen.insert((method.clone(), p.clone())) {
                        c.err(&path, format!("duplicate endpoint {method} {p}"));
                    }
                    endpoints.push(Endpoint { method, path: p, handler });
                }
            }
            Some(other) => c.err("$.api.endpoints", format!("must be an array, found {}", kind(other))),
        },
        Some(other) => c.err("$.api", format!("must be an object, found {}", kind(other))),
    }

    let mut events = Vec::new();
    match obj.get("events") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("$.events[{i}]");
                let Value::Object(e) = item else {
                    c.err(&path, format!("must be an object, found {}", kind(item)));
                    continue;
                };
                let topic = c.string(e, "topic", &format!("{path}.topic"), true).unwrap_or_default();
                if e.contains_key("topic") && topic.trim().is_empty() {
                    c.err(format!("{path}.topic"), "must not be empty");
                }
                let handler = c.string(e, "handler", &format!("{path}.handler"), true).unwrap_or_default();
                if e.get("handler").is_some_and(Value::is_string) && handler.trim().is_empty() {
                    c.err(format!("{path}.handler"), "must not be empty");
                }
                c.unknown_keys(e, EVENT_KEYS, &path);
                events.push(EventSubscription { topic, handler });
            }
        }
        Some(other) => c.err("$.events", format!("must be an array, found {}", kind(other))),
    }

    let egress = obj.get("egress").is_some_and(|v| !v.is_null()).then(|| c.strings(&obj, "egress", "$.egress"));
    for (i, entry) in egress.iter().flatten().enumerate() {
        if let Some(problem) = egress_problem(entry) {
            c.err(format!("$.egress[{i}]"), problem);
        }
    }

    let mut entry = c.string(&obj, "entry", "$.entry", false).unwrap_or_else(|| DEFAULT_ENTRY.to_string());
    // Alga's tooling may name the export too (`dist/main.wasm#handler`); the component is the
    // file, and the runner calls its `handler` export whatever the suffix says.
    if let Some((file, _export)) = entry.split_once('#') {
        entry = file.to_string();
    }
    if let Some(problem) = bundle_path_problem(&entry) {
        c.err("$.entry", problem);
    }

    let mut ui = None;
    match obj.get("ui") {
        None | Some(Value::Null) => {}
        Some(Value::Object(u)) => {
            c.unknown_keys(u, UI_KEYS, "$.ui");
            let kind_ = c.string(u, "type", "$.ui.type", true).unwrap_or_default();
            if u.contains_key("type") && kind_ != "iframe" {
                c.err("$.ui.type", "must be `iframe`");
            }
            let mut entry = c.string(u, "entry", "$.ui.entry", true).unwrap_or_default();
            // Alga's tooling writes the entry relative to the bundle's root (`ui/index.html`);
            // it is kept relative to `ui/`, unless the bundle really has `ui/ui/...`.
            if let Some(rest) = entry.strip_prefix("ui/")
                && !files.is_some_and(|f| f.contains(&format!("ui/{entry}")))
            {
                entry = rest.to_string();
            }
            if u.contains_key("entry") {
                if let Some(problem) = bundle_path_problem(&entry) {
                    c.err("$.ui.entry", problem);
                } else if let Some(files) = files
                    && !files.contains(&format!("ui/{entry}"))
                {
                    c.err("$.ui.entry", format!("`ui/{entry}` is not in the bundle"));
                }
            }
            let mut label = None;
            match u.get("hooks") {
                None | Some(Value::Null) => {}
                Some(Value::Object(h)) => match h.get("appMenu") {
                    None | Some(Value::Null) => {}
                    Some(Value::Object(m)) => {
                        let l = c.string(m, "label", "$.ui.hooks.appMenu.label", true).unwrap_or_default();
                        if m.contains_key("label") && l.trim().is_empty() {
                            c.err("$.ui.hooks.appMenu.label", "must not be empty");
                        }
                        label = Some(l);
                    }
                    Some(other) => c.err("$.ui.hooks.appMenu", format!("must be an object, found {}", kind(other))),
                },
                Some(other) => c.err("$.ui.hooks", format!("must be an object, found {}", kind(other))),
            }
            ui = Some(Ui { kind: kind_, entry, app_menu_label: label });
        }
        Some(other) => c.err("$.ui", format!("must be an object, found {}", kind(other))),
    }

    match obj.get("precompiled") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(other) => c.err("$.precompiled", format!("must be an object, found {}", kind(other))),
    }
    let assets = c.strings(&obj, "assets", "$.assets");
    let sbom = c.string(&obj, "sbom", "$.sbom", false);
    if let Some(s) = &sbom
        && let Some(problem) = bundle_path_problem(s)
    {
        c.err("$.sbom", problem);
    }

    let manifest = Manifest {
        name,
        publisher,
        version,
        runtime,
        capabilities,
        endpoints,
        events,
        egress,
        ui,
        entry,
        assets,
        sbom,
        warnings: std::mem::take(&mut c.warnings),
    };
    if let Some(files) = files
        && manifest.needs_component()
        && !files.contains(&manifest.entry)
        && c.errors.iter().all(|e| e.path != "$.entry")
    {
        c.err(
            "$.entry",
            format!("`{}` is not in the bundle (required: the manifest declares endpoints or events)", manifest.entry),
        );
    }
    if c.errors.is_empty() { Ok(manifest) } else { Err(ManifestErrors(c.errors)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const GOOD: &str = r#"{
        "name": "com.example.hello",
        "publisher": "Example Inc",
        "version": "1.2.3",
        "runtime": "wasm-js@1",
        "capabilities": ["http.fetch", "cap:storage.kv"],
        "api": {"endpoints": [{"method": "GET", "path": "/items/:id", "handler": "get"}]},
        "events": [{"topic": "ticket.created", "handler": "on"}],
        "egress": ["api.example.com", "*.example.org:8443"],
        "ui": {"type": "iframe", "entry": "index.html", "hooks": {"appMenu": {"label": "Hello"}}},
        "precompiled": {"x86_64": "precompiled/x.cwasm"}
    }"#;

    #[test]
    fn a_good_manifest_parses() {
        let m = parse(GOOD.as_bytes(), Some(&files(&["dist/main.wasm", "ui/index.html"]))).unwrap();
        assert_eq!(m.entry, DEFAULT_ENTRY);
        assert!(m.capabilities.contains(Capability::HttpFetch));
        assert_eq!(m.endpoints[0].path, "/items/:id");
        assert_eq!(m.ui.unwrap().app_menu_label.as_deref(), Some("Hello"));
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let bad = r#"{
            "name": "Not-A-Domain",
            "version": "one",
            "runtime": "python@3",
            "capabilities": ["cap:root", 7],
            "api": {"endpoints": [
                {"method": "FETCH", "path": "no-slash", "handler": "h"},
                {"method": "GET", "path": "/a/../b", "handler": "h"},
                {"method": "GET", "path": "/x", "handler": "h"},
                {"method": "GET", "path": "/x", "handler": "h"}
            ]},
            "ui": {"type": "window", "entry": "../index.html"},
            "surprise": true
        }"#;
        let errors = parse(bad.as_bytes(), Some(&files(&[]))).unwrap_err().0;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        for expected in [
            "$.name",
            "$.publisher",
            "$.version",
            "$.runtime",
            "$.capabilities[0]",
            "$.capabilities[1]",
            "$.api.endpoints[0].method",
            "$.api.endpoints[0].path",
            "$.api.endpoints[1].path",
            "$.api.endpoints[3]",
            "$.ui.type",
            "$.ui.entry",
            "$.entry",
        ] {
            assert!(paths.contains(&expected), "{expected} not in {paths:?}");
        }
    }

    #[test]
    fn what_alga_tooling_writes_is_accepted_and_unknown_fields_are_warnings() {
        let alga = r#"{
            "name": "com.example.alga", "publisher": "Acme", "version": "0.3.0", "runtime": "wasm-js@1",
            "capabilities": ["context.read", "cap:storage.kv"],
            "entry": "dist/main.wasm#handler",
            "ui": {"type": "iframe", "entry": "ui/index.html", "routes": [{"path": "/"}],
                   "hooks": {"appMenu": {"label": "A"}, "clientPortalMenu": {"label": "B"}}},
            "api": {"endpoints": [{"method": "GET", "path": "/x", "handler": "dist/main#h", "schedulable": true}]},
            "precompiled": {}, "assets": ["ui/**/*"], "sbom": "sbom.spdx.json",
            "surprise": 1
        }"#;
        let m = parse(alga.as_bytes(), Some(&files(&["dist/main.wasm", "ui/index.html"]))).unwrap();
        assert_eq!(m.entry, "dist/main.wasm");
        assert!(m.capabilities.contains(Capability::ContextRead));
        assert_eq!(m.egress, None, "no egress field: no list of its own");
        let warned: Vec<&str> = m.warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(warned, ["$.surprise"]);
        let wildcard = alga.replace(r#""version": "0.3.0""#, r#""version": "0.3.*""#);
        let e = parse(wildcard.as_bytes(), None).unwrap_err().0;
        assert_eq!(e[0].path, "$.version");
        assert!(e[0].message.contains("`0.3.0`"), "{}", e[0].message);
        let empty = alga.replace(r#""surprise": 1"#, r#""egress": []"#);
        assert_eq!(parse(empty.as_bytes(), None).unwrap().egress, Some(vec![]), "an empty list still bounds");
    }

    #[test]
    fn referenced_files_must_exist() {
        let errors = parse(GOOD.as_bytes(), Some(&files(&["ui/index.html"]))).unwrap_err().0;
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "$.entry");
        let errors = parse(GOOD.as_bytes(), Some(&files(&["dist/main.wasm"]))).unwrap_err().0;
        assert_eq!(errors[0].path, "$.ui.entry");
    }

    #[test]
    fn a_ui_entry_relative_to_the_bundle_root_is_accepted() {
        let alga = GOOD.replace(r#""entry": "index.html""#, r#""entry": "ui/index.html""#);
        assert_ne!(alga, GOOD);
        let m = parse(alga.as_bytes(), Some(&files(&["dist/main.wasm", "ui/index.html"]))).unwrap();
        assert_eq!(m.ui.unwrap().entry, "index.html");
        // A bundle that really has `ui/ui/index.html` keeps it.
        let m = parse(alga.as_bytes(), Some(&files(&["dist/main.wasm", "ui/ui/index.html"]))).unwrap();
        assert_eq!(m.ui.unwrap().entry, "ui/index.html");
    }

    #[test]
    fn not_json_is_one_error() {
        let e = parse(b"{nope", None).unwrap_err().0;
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("not valid JSON"));
    }
}
