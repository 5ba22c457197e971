//! A test CA made with `openssl` (installed by `tests/run`), for TLS to the real servers the
//! tests start (PostgreSQL, and Garage behind a TLS terminator).

use std::path::Path;
use std::process::Command;

/// Whether `openssl` runs here.
pub fn available() -> bool {
    Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success())
}

/// Runs openssl with `args` in `dir`.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Writes a test CA (`ca.pem`, `ca.key`) into `dir`, and a server certificate it signed
/// (`server.pem`, `server.key`) whose only name is `san` (`DNS:localhost`, `IP:127.0.0.1`).
pub fn test_ca(dir: &Path, cn: &str, san: &str) {
    openssl(
        dir,
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem"]
            .into_iter()
            .chain(["-days", "2", "-subj", "/CN=alga-runner test CA"])
            .collect::<Vec<_>>(),
    );
    let subject = format!("/CN={cn}");
    openssl(
        dir,
        &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", &subject],
    );
    std::fs::write(dir.join("ext.cnf"), format!("subjectAltName={san}\nextendedKeyUsage=serverAuth\n")).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}
