//! Layer 5: Landlock with every access right of the kernel's ABI handled and no rule at all.

use std::io;

use alga_shared::protocol::LayerStatus;
use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, RestrictionStatus, Ruleset, RulesetAttr, RulesetStatus,
    Scope,
};

/// The Landlock ABI version the running kernel offers (0: none).
pub fn kernel_abi() -> u8 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag, landlock_create_ruleset
    // only returns the ABI number (or an error); it reads and writes no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u8::try_from(v).unwrap_or(0)
}

fn crate_abi(version: u8) -> ABI {
    match version {
        0 => ABI::Unsupported,
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        6 => ABI::V6,
        7 => ABI::V7,
        8 => ABI::V8,
        9 => ABI::V9,
        _ => ABI::V10,
    }
}

fn restrict(abi: ABI) -> Result<RestrictionStatus, landlock::RulesetError> {
    let mut ruleset =
        Ruleset::default().set_compatibility(CompatLevel::BestEffort).handle_access(AccessFs::from_all(abi))?;
    if abi >= ABI::V4 {
        ruleset = ruleset.handle_access(AccessNet::from_all(abi))?;
    }
    if abi >= ABI::V6 {
        ruleset = ruleset.scope(Scope::from_all(abi))?;
    }
    // No rule is added: nothing on any filesystem is reachable, no TCP bind or connect.
    ruleset.create()?.restrict_self()
}

pub fn apply() -> io::Result<(LayerStatus, u8)> {
    let version = kernel_abi();
    if version == 0 {
        return Ok((LayerStatus::missing("the kernel offers no Landlock (not built in or not enabled at boot)"), 0));
    }
    let status = restrict(crate_abi(version)).map_err(io::Error::other)?;
    let what = match version {
        1..=3 => "filesystem",
        4 | 5 => "filesystem and TCP",
        _ => "filesystem, TCP, abstract unix sockets and signals",
    };
    let layer = match status.ruleset {
        RulesetStatus::FullyEnforced => LayerStatus::full(format!("ABI {version}: {what} denied")),
        RulesetStatus::PartiallyEnforced => {
            LayerStatus::partial(format!("ABI {version}: {what} requested, only partly enforced"))
        }
        RulesetStatus::NotEnforced => LayerStatus::missing(format!("ABI {version}: not enforced")),
    };
    Ok((layer, version))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use super::*;

    const CHILD: &str = "ALGA_LANDLOCK_MEMFD_CHILD";

    /// Irreversible, so it runs in a child process: the test binary again, this test alone.
    #[test]
    fn under_the_layer_a_memfd_opens_and_no_file_does() {
        if std::env::var_os(CHILD).is_none() {
            if kernel_abi() == 0 {
                assert!(
                    std::env::var_os("ALGA_RUNNER_REQUIRE_ALL_FEATURES").is_none(),
                    "required kernel feature missing: Landlock"
                );
                eprintln!("SKIPPED under_the_layer_a_memfd_opens_and_no_file_does: no Landlock");
                return;
            }
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "harden::landlock::tests::under_the_layer_a_memfd_opens_and_no_file_does"])
                .env(CHILD, "1")
                .status()
                .unwrap();
            assert!(status.success(), "the child found a file it could read: {status}");
            return;
        }
        let fd = nix::sys::memfd::memfd_create(c"alga-artifact-test", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let mut file = std::fs::File::from(fd);
        file.write_all(b"artifact").unwrap();
        let (layer, _) = apply().unwrap();
        assert_eq!(layer.level, alga_shared::protocol::Level::Full, "{}", layer.detail);
        // The artifact, opened again through /proc as a preloaded sandbox does: readable.
        let again = std::fs::read(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        assert_eq!(again, b"artifact");
        // Anything else, on any filesystem: refused.
        for other in ["/proc/self/status", "/proc/1/cmdline", "/etc/hostname", "/dev/null"] {
            let e = std::fs::read(other).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{other}: {e}");
        }
        assert!(std::fs::File::create("/tmp/alga-landlock-test").is_err(), "no file is created");
    }
}
