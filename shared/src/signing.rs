//! Bundle signatures: standard minisign detached signatures, checked against the trust bundle
//! (03-bundles.md, "Signing" and "Trust bundle").

use std::io::Cursor;

use minisign::{PublicKey, SignatureBox};

use crate::manifest::Manifest;

/// The prefix of the trusted comment `alga-runner sign` writes.
pub const COMMENT_PREFIX: &str = "alga-bundle ";

/// The trusted comment binding a signature to a bundle's identity.
pub fn trusted_comment(manifest: &Manifest, content_hash: &str) -> String {
    format!("{COMMENT_PREFIX}name={} version={} content_hash={content_hash}", manifest.name, manifest.version)
}

/// How minisign names a key: its 8-byte key number as 16 uppercase hex digits.
pub fn key_id(keynum: &[u8]) -> String {
    let mut n = [0u8; 8];
    n.copy_from_slice(&keynum[..8.min(keynum.len())]);
    format!("{:016X}", u64::from_le_bytes(n))
}

/// One trusted publisher key.
#[derive(Clone)]
pub struct TrustedKey {
    pub key_id: String,
    pub key: PublicKey,
    /// When set, the key signs only manifests whose `publisher` is exactly this.
    pub publisher: Option<String>,
    /// When set, the key signs only these extension names (`names=`).
    pub names: Option<NameScope>,
}

/// The extension names a key may sign (`names=<pattern>[,<pattern>…]`): each pattern an exact
/// name, or `prefix.*` for every name below `prefix.` (at any depth, not `prefix` itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameScope(Vec<String>);

impl NameScope {
    fn parse(list: &str) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for p in list.split(',') {
            let p = p.trim();
            // The labels of a manifest name (lower case, digits, `-`): a pattern that no name can
            // match is a mistake, refused rather than silently matching nothing.
            let name = p.strip_suffix(".*").unwrap_or(p);
            let label = |l: &str| {
                !l.is_empty()
                    && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            let valid = !name.is_empty() && name.split('.').all(label);
            if !valid {
                return Err(format!("`{p}` in `names=` is not an extension name or `prefix.*`"));
            }
            patterns.push(p.to_string());
        }
        Ok(NameScope(patterns))
    }

    /// Whether `name` is inside the scope.
    pub fn allows(&self, name: &str) -> bool {
        self.0.iter().any(|p| match p.strip_suffix(".*") {
            Some(prefix) => {
                name.len() > prefix.len() + 1 && name.starts_with(prefix) && name.as_bytes()[prefix.len()] == b'.'
            }
            None => p == name,
        })
    }
}

impl std::fmt::Display for NameScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Splits what follows a key on its line into `publisher` and `names`: `publisher=` takes a
/// quoted value, or the rest of the line up to ` names=`; `names=` a comma list.
fn parse_scopes(rest: &str) -> Result<(Option<String>, Option<NameScope>), String> {
    let mut publisher = None;
    let mut names = None;
    let mut rest = rest.trim();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("publisher=") {
            if publisher.is_some() {
                return Err("`publisher=` is given twice".into());
            }
            let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
                let end = quoted.find('"').ok_or("`publisher=\"` has no closing quote")?;
                (&quoted[..end], &quoted[end + 1..])
            } else {
                match after.find(" names=") {
                    Some(at) => (&after[..at], &after[at..]),
                    None => (after, ""),
                }
            };
            let value = value.trim();
            if value.is_empty() {
                return Err("`publisher=` needs a name".into());
            }
            publisher = Some(value.to_string());
            rest = next.trim_start();
        } else if let Some(after) = rest.strip_prefix("names=") {
            if names.is_some() {
                return Err("`names=` is given twice".into());
            }
            let (list, next) = after.split_once(char::is_whitespace).unwrap_or((after, ""));
            names = Some(NameScope::parse(list)?);
            rest = next.trim_start();
        } else {
            return Err(format!(
                "after the key, expected `publisher=<name>` and/or `names=<pattern>[,<pattern>…]`, found `{rest}`"
            ));
        }
    }
    Ok((publisher, names))
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedKey")
            .field("key_id", &self.key_id)
            .field("publisher", &self.publisher)
            .field("names", &self.names)
            .finish()
    }
}

/// The set of keys whose signatures are accepted. Empty is valid: nothing verifies.
#[derive(Debug, Clone, Default)]
pub struct TrustBundle {
    keys: Vec<TrustedKey>,
}

/// A trust bundle that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("trust bundle {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("trust bundle line {line}: {message}")]
    Line { line: usize, message: String },
}

impl TrustBundle {
    /// Parses the text format: `#` comments, blank lines, minisign `untrusted comment:` lines
    /// (so a `.pub` file can be pasted), and one key per line, optionally followed by
    /// `publisher=<name>` (quoted, or up to ` names=`) and `names=<pattern>[,<pattern>…]`.
    /// PEM certificates are refused with a sentence saying what is expected instead.
    pub fn parse(text: &str) -> Result<Self, TrustError> {
        let mut keys: Vec<TrustedKey> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with("untrusted comment:") {
                continue;
            }
            if line.starts_with("-----BEGIN") {
                return Err(TrustError::Line {
                    line: i + 1,
                    message: "this is a PEM certificate or key; the trust bundle lists minisign public keys \
                              (`RW…`, one per line, as `alga-runner keygen` or `minisign -G` writes them in \
                              the .pub file), each optionally followed by `publisher=` and `names=`"
                        .into(),
                });
            }
            let (key_text, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let key = PublicKey::from_base64(key_text).map_err(|e| TrustError::Line {
                line: i + 1,
                message: format!("`{key_text}` is not a minisign public key ({e})"),
            })?;
            let (publisher, names) = parse_scopes(rest).map_err(|message| TrustError::Line { line: i + 1, message })?;
            let key_id = key_id(key.keynum());
            if keys.iter().any(|k| k.key_id == key_id) {
                return Err(TrustError::Line { line: i + 1, message: format!("key {key_id} is listed twice") });
            }
            keys.push(TrustedKey { key_id, key, publisher, names });
        }
        Ok(TrustBundle { keys })
    }

    /// Loads `SIGNING_TRUST_BUNDLE`: a file path, unless the value contains a newline or starts
    /// with `RW` (inline contents).
    pub fn load(source: &str) -> Result<Self, TrustError> {
        if source.contains('\n') || source.trim_start().starts_with("RW") {
            return Self::parse(source);
        }
        let text =
            std::fs::read_to_string(source).map_err(|e| TrustError::Read { path: source.to_string(), source: e })?;
        Self::parse(&text)
    }

    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    pub fn key(&self, key_id: &str) -> Option<&TrustedKey> {
        self.keys.iter().find(|k| k.key_id == key_id)
    }
}

/// Why a signature was not accepted. `is_untrusted` separates "valid but not trusted here"
/// (`signer_untrusted`) from "not a valid signature" (`signature_invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature is not a minisign signature: {0}")]
    Malformed(String),
    #[error("key {key_id} is not in the trust bundle")]
    UnknownKey { key_id: String },
    #[error("the signature does not match the bundle's bytes (signed by key {key_id})")]
    Mismatch { key_id: String },
    #[error("key {key_id} may sign only for publisher `{scope}`, the manifest says `{publisher}`")]
    PublisherScope { key_id: String, scope: String, publisher: String },
    #[error("key {key_id} may sign only the extension names `{scope}`, the manifest says `{name}`")]
    NameScope { key_id: String, scope: String, name: String },
    #[error("the trusted comment says {field}={signed}, the bundle has {actual}")]
    Comment { field: &'static str, signed: String, actual: String },
}

impl SignatureError {
    pub fn is_untrusted(&self) -> bool {
        matches!(
            self,
            SignatureError::UnknownKey { .. }
                | SignatureError::PublisherScope { .. }
                | SignatureError::NameScope { .. }
        )
    }
}

/// A signature that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub key_id: String,
    pub publisher_scope: Option<String>,
    pub name_scope: Option<NameScope>,
    pub trusted_comment: String,
}

/// Step one, before the archive is opened: the signature is over exactly these bytes, by a key
/// in the trust bundle.
pub fn verify_bytes(trust: &TrustBundle, bytes: &[u8], signature: &str) -> Result<Verified, SignatureError> {
    let sig = SignatureBox::from_string(signature).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let key_id = key_id(sig.keynum());
    let trusted = trust.key(&key_id).ok_or_else(|| SignatureError::UnknownKey { key_id: key_id.clone() })?;
    minisign::verify(&trusted.key, &sig, Cursor::new(bytes), true, false, false)
        .map_err(|_| SignatureError::Mismatch { key_id: key_id.clone() })?;
    let trusted_comment = sig.trusted_comment().map_err(|e| SignatureError::Malformed(e.to_string()))?;
    Ok(Verified {
        key_id,
        publisher_scope: trusted.publisher.clone(),
        name_scope: trusted.names.clone(),
        trusted_comment,
    })
}

/// What a signature must agree with: the bundle's manifest identity and content hash.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub publisher: &'a str,
    pub content_hash: &'a str,
}

impl<'a> Identity<'a> {
    pub fn of(manifest: &'a Manifest, content_hash: &'a str) -> Self {
        Identity { name: &manifest.name, version: &manifest.version, publisher: &manifest.publisher, content_hash }
    }
}

/// Step two, once the manifest is known: the key's publisher and name scopes, and the identity in the
/// trusted comment when it is an `alga-bundle` comment.
pub fn check_identity(verified: &Verified, id: Identity<'_>) -> Result<(), SignatureError> {
    if let Some(scope) = &verified.publisher_scope
        && scope != id.publisher
    {
        return Err(SignatureError::PublisherScope {
            key_id: verified.key_id.clone(),
            scope: scope.clone(),
            publisher: id.publisher.to_string(),
        });
    }
    if let Some(scope) = &verified.name_scope
        && !scope.allows(id.name)
    {
        return Err(SignatureError::NameScope {
            key_id: verified.key_id.clone(),
            scope: scope.to_string(),
            name: id.name.to_string(),
        });
    }
    if let Some(fields) = verified.trusted_comment.strip_prefix(COMMENT_PREFIX) {
        for pair in fields.split_whitespace() {
            let Some((field, signed)) = pair.split_once('=') else { continue };
            let (field, actual): (&'static str, &str) = match field {
                "name" => ("name", id.name),
                "version" => ("version", id.version),
                "content_hash" => ("content_hash", id.content_hash),
                _ => continue,
            };
            if signed != actual {
                return Err(SignatureError::Comment { field, signed: signed.to_string(), actual: actual.to_string() });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use minisign::KeyPair;

    fn manifest() -> Manifest {
        crate::manifest::parse(crate::bundle::tests::MANIFEST_JSON.as_bytes(), None).unwrap()
    }

    fn sign(kp: &KeyPair, bytes: &[u8], comment: &str) -> String {
        minisign::sign(Some(&kp.pk), &kp.sk, Cursor::new(bytes), Some(comment), None).unwrap().into_string()
    }

    #[test]
    fn a_trusted_signature_verifies_and_binds_the_identity() {
        let kp = KeyPair::generate_unencrypted_keypair().unwrap();
        let trust = TrustBundle::parse(&format!("# keys\n{} publisher=Example\n", kp.pk.to_base64())).unwrap();
        let bytes = b"bundle bytes";
        let hash = crate::bundle::content_hash(bytes);
        let sig = sign(&kp, bytes, &trusted_comment(&manifest(), &hash));
        let v = verify_bytes(&trust, bytes, &sig).unwrap();
        assert_eq!(v.publisher_scope.as_deref(), Some("Example"));
        check_identity(&v, Identity::of(&manifest(), &hash)).unwrap();

        let mut m = manifest();
        m.version = "9.9.9".into();
        assert!(matches!(
            check_identity(&v, Identity::of(&m, &hash)),
            Err(SignatureError::Comment { field: "version", .. })
        ));
        m = manifest();
        m.publisher = "Mallory".into();
        let e = check_identity(&v, Identity::of(&m, &hash)).unwrap_err();
        assert!(e.is_untrusted(), "{e}");
    }

    #[test]
    fn tampering_unknown_keys_and_garbage_are_refused() {
        let kp = KeyPair::generate_unencrypted_keypair().unwrap();
        let other = KeyPair::generate_unencrypted_keypair().unwrap();
        let trust = TrustBundle::parse(&kp.pk.to_base64()).unwrap();
        let sig = sign(&kp, b"abc", "x");
        assert!(matches!(verify_bytes(&trust, b"abd", &sig), Err(SignatureError::Mismatch { .. })));
        let e = verify_bytes(&trust, b"abc", &sign(&other, b"abc", "x")).unwrap_err();
        assert!(e.is_untrusted());
        assert!(matches!(verify_bytes(&trust, b"abc", "garbage"), Err(SignatureError::Malformed(_))));
        assert!(matches!(verify_bytes(&TrustBundle::default(), b"abc", &sig), Err(SignatureError::UnknownKey { .. })));
    }

    #[test]
    fn trust_bundle_errors_name_the_line() {
        let e = TrustBundle::parse("# ok\n\nnot-a-key\n").unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        let kp = KeyPair::generate_unencrypted_keypair().unwrap();
        let e = TrustBundle::parse(&format!("{} owner=x", kp.pk.to_base64())).unwrap_err();
        assert!(e.to_string().contains("publisher="), "{e}");
        assert_eq!(TrustBundle::parse("").unwrap().keys().len(), 0, "empty is valid");
    }

    #[test]
    fn name_scopes_bind_a_key_to_its_names() {
        let kp = KeyPair::generate_unencrypted_keypair().unwrap();
        let pk = kp.pk.to_base64();
        let scoped = |line: &str| TrustBundle::parse(&format!("{pk} {line}")).unwrap().keys()[0].clone();
        let k = scoped(r#"publisher="Example Inc" names=com.example.*,com.example"#);
        assert_eq!(k.publisher.as_deref(), Some("Example Inc"));
        let names = k.names.unwrap();
        for ok in ["com.example", "com.example.hello", "com.example.a.b"] {
            assert!(names.allows(ok), "{ok}");
        }
        for no in ["com.examplex", "com.exampl", "org.example.hello", "com", ""] {
            assert!(!names.allows(no), "{no}");
        }
        // The unquoted publisher runs up to ` names=`; names alone; publisher alone.
        let k = scoped("publisher=Example Inc names=com.acme.crm");
        assert_eq!(k.publisher.as_deref(), Some("Example Inc"));
        assert!(k.names.as_ref().unwrap().allows("com.acme.crm") && !k.names.unwrap().allows("com.acme.crm2"));
        assert_eq!(scoped("names=com.acme.*").publisher, None);
        assert_eq!(scoped("publisher=Example Inc").names, None);
        let bad_lines = [
            "names=",
            "names=com..x",
            "names=*",
            "names=Com.Acme",
            "names=com_acme.x",
            r#"publisher="open"#,
            "names=a names=b",
            "publisher=",
        ];
        for bad in bad_lines {
            assert!(TrustBundle::parse(&format!("{pk} {bad}")).is_err(), "{bad}");
        }

        // Checked with the identity: a name outside the scope is untrusted, naming key and scope.
        let trust = TrustBundle::parse(&format!("{pk} names=com.other.*")).unwrap();
        let bytes = b"bundle bytes";
        let hash = crate::bundle::content_hash(bytes);
        let v = verify_bytes(&trust, bytes, &sign(&kp, bytes, &trusted_comment(&manifest(), &hash))).unwrap();
        let e = check_identity(&v, Identity::of(&manifest(), &hash)).unwrap_err();
        assert!(e.is_untrusted(), "{e}");
        assert!(e.to_string().contains(&v.key_id) && e.to_string().contains("com.other.*"), "{e}");
    }

    #[test]
    fn a_pem_trust_bundle_is_refused_with_what_to_use() {
        let e = TrustBundle::parse("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap_err();
        assert!(e.to_string().contains("minisign public keys"), "{e}");
    }

    #[test]
    fn load_takes_inline_keys_or_paths() {
        let kp = KeyPair::generate_unencrypted_keypair().unwrap();
        let inline = kp.pk.to_base64();
        assert_eq!(TrustBundle::load(&inline).unwrap().keys().len(), 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trust");
        std::fs::write(&path, format!("{inline}\n")).unwrap();
        assert_eq!(TrustBundle::load(path.to_str().unwrap()).unwrap().keys().len(), 1);
        assert!(matches!(TrustBundle::load("/nonexistent"), Err(TrustError::Read { .. })));
    }
}
