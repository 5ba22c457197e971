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
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedKey").field("key_id", &self.key_id).field("publisher", &self.publisher).finish()
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
    /// `publisher=<name>` (the rest of the line).
    pub fn parse(text: &str) -> Result<Self, TrustError> {
        let mut keys: Vec<TrustedKey> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with("untrusted comment:") {
                continue;
            }
            let (key_text, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let key = PublicKey::from_base64(key_text).map_err(|e| TrustError::Line {
                line: i + 1,
                message: format!("`{key_text}` is not a minisign public key ({e})"),
            })?;
            let rest = rest.trim();
            let publisher = if rest.is_empty() {
                None
            } else {
                let p = rest.strip_prefix("publisher=").ok_or_else(|| TrustError::Line {
                    line: i + 1,
                    message: format!("after the key, expected `publisher=<name>`, found `{rest}`"),
                })?;
                if p.is_empty() {
                    return Err(TrustError::Line { line: i + 1, message: "`publisher=` needs a name".into() });
                }
                Some(p.to_string())
            };
            let key_id = key_id(key.keynum());
            if keys.iter().any(|k| k.key_id == key_id) {
                return Err(TrustError::Line { line: i + 1, message: format!("key {key_id} is listed twice") });
            }
            keys.push(TrustedKey { key_id, key, publisher });
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
    #[error("the trusted comment says {field}={signed}, the bundle has {actual}")]
    Comment { field: &'static str, signed: String, actual: String },
}

impl SignatureError {
    pub fn is_untrusted(&self) -> bool {
        matches!(self, SignatureError::UnknownKey { .. } | SignatureError::PublisherScope { .. })
    }
}

/// A signature that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub key_id: String,
    pub publisher_scope: Option<String>,
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
    Ok(Verified { key_id, publisher_scope: trusted.publisher.clone(), trusted_comment })
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

/// Step two, once the manifest is known: the key's publisher scope, and the identity in the
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
