//! The bundle and signing commands: `keygen`, `pack`, `sign`, `verify`, `inspect`.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use alga_shared::bundle::{self, ArchiveLimits};
use alga_shared::signing::{self, Identity, TrustBundle};
use anyhow::{Context, bail};
use minisign::{KeyPair, SecretKey, SecretKeyBox, SignatureBox};
use serde_json::json;

use super::{EXIT_FAILURE, EXIT_USAGE};

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Write PREFIX.pub and PREFIX.key; an existing directory gets alga-signing.pub and
    /// alga-signing.key inside it.
    #[arg(short = 'o', long = "output", value_name = "PREFIX", default_value = "./alga-signing")]
    pub prefix: PathBuf,
    /// Do not encrypt the secret key with a password.
    #[arg(long)]
    pub unencrypted: bool,
    /// Read the password from this file (first line) instead of prompting.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Overwrite existing key files.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct PackArgs {
    /// The directory to pack (it holds manifest.json).
    pub dir: PathBuf,
    /// Where to write the bundle.
    #[arg(short = 'o', long = "output", value_name = "FILE", default_value = "bundle.tar.zst")]
    pub output: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The bundle to sign.
    pub bundle: PathBuf,
    /// The secret key (from `alga-runner keygen` or `minisign -G`).
    #[arg(long, value_name = "SK")]
    pub key: PathBuf,
    /// Read the key's password from this file instead of prompting.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Where to write the signature [default: BUNDLE.minisig].
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The bundle to verify.
    pub bundle: PathBuf,
    /// The signature [default: BUNDLE.minisig].
    #[arg(long, value_name = "FILE")]
    pub sig: Option<PathBuf>,
    /// The trust bundle [default: $SIGNING_TRUST_BUNDLE].
    #[arg(long, value_name = "FILE")]
    pub trust: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The bundle to inspect.
    pub bundle: PathBuf,
    /// Print only the content hash (`sha256:...`), for scripts.
    #[arg(long)]
    pub hash: bool,
}

fn read_password(file: &Option<PathBuf>, prompt: &str) -> anyhow::Result<String> {
    match file {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading --password-file {}", f.display()))?;
            Ok(text.lines().next().unwrap_or("").to_string())
        }
        None => rpassword::prompt_password(prompt)
            .context("reading a password from the terminal (without one, pass --password-file FILE)"),
    }
}

fn sig_path(bundle: &Path) -> PathBuf {
    let mut p = bundle.as_os_str().to_owned();
    p.push(".minisig");
    PathBuf::from(p)
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<u8> {
    // `-o DIR` (or `-o DIR/`) means the files go inside it, not beside it as `DIR.pub`.
    let prefix = if args.prefix.is_dir() || args.prefix.as_os_str().to_string_lossy().ends_with('/') {
        if !args.prefix.is_dir() {
            eprintln!("error: {} is not a directory; create it first", args.prefix.display());
            return Ok(EXIT_USAGE);
        }
        args.prefix.join("alga-signing")
    } else {
        args.prefix.clone()
    };
    let mut pub_path = prefix.as_os_str().to_owned();
    pub_path.push(".pub");
    let mut key_path = prefix.as_os_str().to_owned();
    key_path.push(".key");
    let (pub_path, key_path) = (PathBuf::from(pub_path), PathBuf::from(key_path));
    for p in [&pub_path, &key_path] {
        if p.exists() && !args.force {
            eprintln!("error: {} exists; pass --force to overwrite it", p.display());
            return Ok(EXIT_USAGE);
        }
    }
    let kp = if args.unencrypted {
        unencrypted_keypair()?
    } else {
        let password = read_password(&args.password_file, "Password for the new secret key: ")?;
        if args.password_file.is_none() {
            let again = rpassword::prompt_password("Password again: ")?;
            if again != password {
                bail!("the passwords do not match");
            }
        }
        if password.is_empty() {
            bail!("an empty password does not protect the key; use --unencrypted to mean it");
        }
        KeyPair::generate_encrypted_keypair(Some(password))?
    };
    let key_id = signing::key_id(kp.pk.keynum());
    let comment = format!("alga-runner key {key_id}");
    std::fs::write(&pub_path, kp.pk.to_box()?.into_string())
        .with_context(|| format!("writing {}", pub_path.display()))?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key_path)
            .with_context(|| format!("writing {}", key_path.display()))?;
        f.write_all(kp.sk.to_box(Some(&comment))?.into_string().as_bytes())?;
    }
    println!("key id:      {key_id}");
    println!("public key:  {} ({})", pub_path.display(), kp.pk.to_base64());
    println!("secret key:  {}{}", key_path.display(), if args.unencrypted { " (unencrypted)" } else { "" });
    println!("trust it:    add `{} publisher=<your publisher>` to the runner's trust bundle", kp.pk.to_base64());
    Ok(0)
}

pub fn pack(args: PackArgs) -> anyhow::Result<u8> {
    let packed = match bundle::pack(&args.dir) {
        Ok(p) => p,
        Err(bundle::PackError::Manifest(errors)) => {
            eprintln!("error: {}/manifest.json is not valid:", args.dir.display());
            for e in errors.0 {
                eprintln!("  - {e}");
            }
            return Ok(EXIT_FAILURE);
        }
        Err(e) => bail!("packing {}: {e}", args.dir.display()),
    };
    std::fs::write(&args.output, &packed.bytes).with_context(|| format!("writing {}", args.output.display()))?;
    for s in &packed.skipped {
        eprintln!("skipped hidden path {s} (bundles contain no hidden files)");
    }
    println!("{} {} {}", packed.manifest.name, packed.manifest.version, args.output.display());
    println!("content_hash: {}", bundle::content_hash(&packed.bytes));
    println!("files: {}, bytes: {}", packed.files, packed.bytes.len());
    Ok(0)
}

/// A key pair whose secret key is stored unencrypted, in the form `minisign -W` writes: the
/// checksum filled in and the KDF algorithm zero. (`KeyPair::generate_unencrypted_keypair` leaves
/// the checksum empty, so nothing can load what it writes.)
pub fn unencrypted_keypair() -> anyhow::Result<KeyPair> {
    // An empty password computes the checksum and skips the encryption.
    let KeyPair { pk, sk } = KeyPair::generate_encrypted_keypair(Some(String::new()))?;
    let mut bytes = sk.to_bytes();
    bytes[2..4].copy_from_slice(&[0, 0]);
    Ok(KeyPair { pk, sk: SecretKey::from_bytes(&bytes)? })
}

fn load_secret_key(path: &Path, password_file: &Option<PathBuf>) -> anyhow::Result<SecretKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading --key {}", path.display()))?;
    // An unencrypted key in minisign's own format (`minisign -G -W`): KDF algorithm zero and no
    // checksum to check.
    if let Some(encoded) = text.lines().nth(1)
        && let Ok(bytes) = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded.trim())
        && bytes.get(2..4) == Some(&[0, 0])
    {
        return SecretKey::from_bytes(&bytes).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()));
    }
    // A key protected by an empty password opens without asking; otherwise ask for it.
    if let Ok(sk) = SecretKey::from_box(SecretKeyBox::from_string(&text)?, Some(String::new())) {
        return Ok(sk);
    }
    let password = read_password(password_file, "Password for the secret key: ")?;
    SecretKey::from_box(SecretKeyBox::from_string(&text)?, Some(password))
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))
}

pub fn sign(args: SignArgs) -> anyhow::Result<u8> {
    let bytes = std::fs::read(&args.bundle).with_context(|| format!("reading {}", args.bundle.display()))?;
    let opened = bundle::open(&bytes, &ArchiveLimits::default())
        .map_err(|e| anyhow::anyhow!("{} is not a valid bundle: {e}", args.bundle.display()))?;
    let sk = load_secret_key(&args.key, &args.password_file)?;
    let comment = signing::trusted_comment(&opened.manifest, &opened.content_hash);
    let untrusted = format!("signature from alga-runner: {} {}", opened.manifest.name, opened.manifest.version);
    let sig = minisign::sign(None, &sk, Cursor::new(&bytes), Some(&comment), Some(&untrusted))?;
    let out = args.output.unwrap_or_else(|| sig_path(&args.bundle));
    std::fs::write(&out, sig.into_string()).with_context(|| format!("writing {}", out.display()))?;
    println!("signature: {}", out.display());
    println!("trusted comment: {comment}");
    Ok(0)
}

pub fn verify(args: VerifyArgs) -> anyhow::Result<u8> {
    let trust_source = args.trust.or_else(|| std::env::var("SIGNING_TRUST_BUNDLE").ok());
    let Some(trust_source) = trust_source else {
        eprintln!("error: no trust bundle: pass --trust FILE or set SIGNING_TRUST_BUNDLE");
        return Ok(EXIT_USAGE);
    };
    let trust = TrustBundle::load(&trust_source)?;
    let bytes = std::fs::read(&args.bundle).with_context(|| format!("reading {}", args.bundle.display()))?;
    let sig_file = args.sig.unwrap_or_else(|| sig_path(&args.bundle));
    let sig =
        std::fs::read_to_string(&sig_file).with_context(|| format!("reading the signature {}", sig_file.display()))?;
    let verified = match signing::verify_bytes(&trust, &bytes, &sig) {
        Ok(v) => v,
        Err(e) => {
            println!("NOT VERIFIED: {e}");
            return Ok(EXIT_FAILURE);
        }
    };
    let opened = match bundle::open(&bytes, &ArchiveLimits::default()) {
        Ok(b) => b,
        Err(e) => {
            println!("NOT VERIFIED: the signature is good but the bundle is not valid: {e}");
            return Ok(EXIT_FAILURE);
        }
    };
    if let Err(e) = signing::check_identity(&verified, Identity::of(&opened.manifest, &opened.content_hash)) {
        println!("NOT VERIFIED: {e}");
        return Ok(EXIT_FAILURE);
    }
    println!("verified: {} {} ({})", opened.manifest.name, opened.manifest.version, opened.content_hash);
    println!("signer key id: {}", verified.key_id);
    println!("publisher scope: {}", verified.publisher_scope.as_deref().unwrap_or("any publisher"));
    println!("name scope: {}", verified.name_scope.as_ref().map_or("any name".to_string(), ToString::to_string));
    Ok(0)
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<u8> {
    let bytes = std::fs::read(&args.bundle).with_context(|| format!("reading {}", args.bundle.display()))?;
    let opened = match bundle::open(&bytes, &ArchiveLimits::default()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {} is not a valid bundle: {e}", args.bundle.display());
            return Ok(EXIT_FAILURE);
        }
    };
    if args.hash {
        println!("{}", opened.content_hash);
        return Ok(0);
    }
    let files: Vec<_> = opened.files.iter().map(|(p, d)| json!({ "path": p, "bytes": d.len() })).collect();
    let sig_file = sig_path(&args.bundle);
    let signature = std::fs::read_to_string(&sig_file).ok().and_then(|s| SignatureBox::from_string(&s).ok()).map(|s| {
        json!({
            "file": sig_file.display().to_string(),
            "key_id": signing::key_id(s.keynum()),
            "trusted_comment": s.trusted_comment().ok(),
        })
    });
    let mut manifest = serde_json::to_value(&opened.manifest)?;
    manifest["capabilities"] = json!(opened.manifest.capabilities.names());
    let out = json!({
        "content_hash": opened.content_hash,
        "size_bytes": opened.size,
        "manifest": manifest,
        "files": files,
        "signature": signature,
        "ignored_precompiled": opened.ignored_precompiled(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}
