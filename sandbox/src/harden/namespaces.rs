//! Layer 3: the namespaces created at `clone`, finished from inside.

use std::io;

use alga_shared::protocol::{LayerStatus, NamespaceSet};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::sys;

/// Mounts an empty, read-only tmpfs as the root and drops the old root: no filesystem at all.
fn empty_root() -> io::Result<()> {
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
    // /proc always exists; mounting over it only shadows it inside this mount namespace.
    mount(
        Some("tmpfs"),
        "/proc",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        Some("size=4k,nr_inodes=2,mode=0555"),
    )?;
    std::env::set_current_dir("/proc")?;
    sys::pivot_root_here()?;
    umount2(".", MntFlags::MNT_DETACH)?;
    std::env::set_current_dir("/")?;
    Ok(())
}

/// Returns the layer's status and the namespaces the process really has.
pub fn apply(created: NamespaceSet, wanted: NamespaceSet) -> io::Result<(LayerStatus, NamespaceSet)> {
    if created.mount {
        empty_root()?;
    }
    if created.uts {
        nix::unistd::sethostname("sandbox")?;
    }
    let have = created.names();
    let missing: Vec<&str> = wanted.names().into_iter().filter(|n| !have.contains(n)).collect();
    let status = if have.is_empty() {
        LayerStatus::missing(format!("no namespaces (the kernel refused: {})", missing.join(", ")))
    } else if missing.is_empty() {
        LayerStatus::full(format!("new {} namespaces; empty root filesystem", have.join(", ")))
    } else {
        LayerStatus::partial(format!("new {} namespaces; not available here: {}", have.join(", "), missing.join(", ")))
    };
    Ok((status, created))
}
