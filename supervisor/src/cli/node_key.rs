//! The node key's commands: `keygen-node` makes one (for every host of a cluster to share), and
//! `rotate-node-key` seals every secret again with a new one, without downtime: each host gets
//! the new key as its node key and the old one beside it (`<file>.previous`, or the
//! `node-key-previous` credential), restarting one at a time (both keys open secrets); then this
//! command seals everything with the new key and records its fingerprint; then the previous key
//! is removed from the hosts.

use std::path::PathBuf;

use super::EXIT_CONFIG;
use crate::secrets::NodeKey;

#[derive(Debug, clap::Args)]
pub struct KeygenNodeArgs {
    /// Where to write the new key (32 random bytes, mode 0600); must not exist.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

pub fn keygen(args: KeygenNodeArgs) -> anyhow::Result<u8> {
    let key = NodeKey::generate(&args.output)?;
    println!("{} (fingerprint {})", args.output.display(), key.fingerprint);
    Ok(0)
}

#[derive(Debug, clap::Args)]
pub struct RotateNodeKeyArgs {
    /// The service's configuration file [default: $ALGA_RUNNER_CONFIG; none: defaults and
    /// environment], for where the secrets are. On sled, stop the service first.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn rotate(args: RotateNodeKeyArgs) -> anyhow::Result<u8> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = match super::load_config(args.config, &env) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stores = match super::stores::open_or_exit(&config, &rt)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let key = stores.secrets.key();
    let Some(previous) = &key.previous else {
        eprintln!(
            "error: no previous key: put the new key at {} and the old one at {}.previous (or give them as the \
             node-key and node-key-previous credentials) on every host first",
            key.source.display(),
            key.source.display()
        );
        return Ok(EXIT_CONFIG);
    };
    let resealed = rt.block_on(stores.secrets.reseal_all())?;
    if let Some(pg) = &stores.shared {
        rt.block_on(async {
            pg.client()
                .await?
                .execute("UPDATE runner_meta SET value = $1 WHERE key = 'node_key_fingerprint'", &[&key.fingerprint])
                .await?;
            anyhow::Ok(())
        })?;
    }
    println!(
        "sealed {resealed} install secret map(s) again with the key {} (fingerprint {}); the previous key ({}) can \
         now be removed from every host",
        key.source.display(),
        key.fingerprint,
        previous.fingerprint
    );
    Ok(0)
}
