//! Layer 3: the namespaces created at `clone`, finished from inside.

use std::io;

use alga_shared::protocol::{LayerStatus, NamespaceSet};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::sys;

/// Mounts an empty, read-only tmpfs as the root and drops the old root: no filesystem at all.
pub fn empty_root() -> io::Result<()> {
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

/// Returns the layer's status and the namespaces the process really has: `created` at its own
/// `clone`, plus `shared` ones the fork server entered once for all its sandboxes.
pub fn apply(
    created: NamespaceSet,
    shared: NamespaceSet,
    wanted: NamespaceSet,
) -> io::Result<(LayerStatus, NamespaceSet)> {
    if created.mount {
        empty_root()?;
    }
    if created.uts {
        nix::unistd::sethostname("sandbox")?;
    }
    let all = created.union(shared);
    let missing = wanted.without(all).names();
    let mut detail = String::new();
    if !created.names().is_empty() {
        detail.push_str(&format!("own {} namespaces", created.names().join(", ")));
    }
    if !shared.names().is_empty() {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&format!(
            "{} namespaces shared by the fork server's sandboxes (empty: no interface, no IPC object)",
            shared.names().join(", ")
        ));
    }
    if created.mount {
        detail.push_str("; empty root filesystem");
    }
    let status = if all.names().is_empty() {
        LayerStatus::missing(format!("no namespaces (the kernel refused: {})", missing.join(", ")))
    } else if missing.is_empty() {
        LayerStatus::full(detail)
    } else {
        LayerStatus::partial(format!("{detail}; not available here: {}", missing.join(", ")))
    };
    Ok((status, all))
}
