//! Finding the host's cgroup setup and this service's place in it.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

#[cfg(test)]
use super::Version;
use super::{Cgroups, V1, V2, kill_pids, read_pids, remove_dir, write};

/// What detection found: a driver rooted at this process's own directory for sandbox slots, or
/// the reason there is none.
#[derive(Debug)]
pub struct Detected {
    pub driver: Option<Box<dyn Cgroups>>,
    /// The version found, even when it cannot be used.
    pub version: Option<super::Version>,
    /// Which version and controllers, or why cgroups cannot be used.
    pub detail: String,
    /// True when a v2 subtree was delegated to (or prepared by) this service.
    pub delegated: bool,
}

/// One line of `/proc/self/mountinfo` that mounts a cgroup filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    mount_point: PathBuf,
    /// `cgroup2`, or `cgroup` with these controllers.
    v2: bool,
    controllers: Vec<String>,
}

fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        // Fields: id parent major:minor root mount_point options [optional...] - fstype source super_options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(mount_point), Some(fstype)) = (fields.get(4), right.first()) else {
            continue;
        };
        let mount_point = PathBuf::from(unescape(mount_point));
        match *fstype {
            "cgroup2" => out.push(CgroupMount { mount_point, v2: true, controllers: Vec::new() }),
            "cgroup" => {
                let controllers = right
                    .get(2)
                    .map(|opts| {
                        opts.split(',')
                            .filter(|o| matches!(*o, "memory" | "pids" | "cpu" | "cpuacct" | "cpuset"))
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(CgroupMount { mount_point, v2: false, controllers });
            }
            _ => {}
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// `/proc/self/cgroup`: controller (or "" for v2) -> path.
fn parse_proc_cgroup(text: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        for c in ctrls.split(',') {
            map.insert(c.to_string(), path.to_string());
        }
    }
    map
}

fn join_cgroup(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// Detects the cgroup setup. Slots will live in a directory named `name` under this process's
/// own cgroup. On v2 this may move the calling process into a leaf `supervisor` cgroup (the
/// "no internal processes" rule), so call it before starting other processes or threads.
pub fn detect(name: &str) -> Detected {
    detect_with(name, true)
}

/// Like [`detect`] but changes nothing: on v2 it only reports whether the subtree could be
/// delegated (for `doctor`).
pub fn probe() -> Detected {
    detect_with("probe", false)
}

fn detect_with(name: &str, prepare: bool) -> Detected {
    let (Ok(mountinfo), Ok(own)) =
        (std::fs::read_to_string("/proc/self/mountinfo"), std::fs::read_to_string("/proc/self/cgroup"))
    else {
        return Detected {
            driver: None,
            version: None,
            detail: "cannot read /proc/self/mountinfo or /proc/self/cgroup".into(),
            delegated: false,
        };
    };
    detect_from(&parse_mountinfo(&mountinfo), &parse_proc_cgroup(&own), name, prepare)
}

fn detect_from(mounts: &[CgroupMount], own: &HashMap<String, String>, name: &str, prepare: bool) -> Detected {
    // v2 first: a unified hierarchy whose controllers include memory and pids at our cgroup.
    if let (Some(m), Some(path)) = (mounts.iter().find(|m| m.v2), own.get("")) {
        let ours = join_cgroup(&m.mount_point, path);
        let available = std::fs::read_to_string(ours.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| available.split_whitespace().any(|x| x == c);
        if has("memory") && has("pids") {
            if !prepare {
                let alone = read_pids(&ours.join("cgroup.procs"))
                    .map(|p| p.iter().all(|&pid| pid == std::process::id()))
                    .unwrap_or(false);
                return Detected {
                    driver: None,
                    version: Some(super::Version::V2),
                    detail: format!(
                        "v2 at {} with controllers: {}{}",
                        ours.display(),
                        available.trim(),
                        if alone {
                            ""
                        } else {
                            "; shared with other processes (run as the systemd service with Delegate=yes)"
                        }
                    ),
                    delegated: alone,
                };
            }
            return match prepare_v2(&ours, name, has("cpu")) {
                Ok(v2) => Detected {
                    detail: format!("v2 at {} (controllers: {})", v2.base.display(), v2.controllers().join(", ")),
                    driver: Some(Box::new(v2)),
                    version: Some(super::Version::V2),
                    delegated: true,
                },
                Err(e) => Detected {
                    driver: None,
                    version: Some(super::Version::V2),
                    detail: format!("v2 at {} is not delegated to this service: {e}", ours.display()),
                    delegated: false,
                },
            };
        }
    }
    // v1 (or hybrid): separate memory and pids hierarchies.
    let dir_for = |controller: &str| -> Option<PathBuf> {
        let m = mounts.iter().find(|m| !m.v2 && m.controllers.iter().any(|c| c == controller))?;
        Some(join_cgroup(&m.mount_point, own.get(controller)?).join(name))
    };
    match (dir_for("memory"), dir_for("pids")) {
        (Some(memory), Some(pids)) => {
            // Mounted is not writable: containers (systemd-nspawn on a v1 host, say) often mount
            // the hierarchies read-only. A probe group tells before any sandbox needs one.
            if prepare && let Err(e) = probe_writable(&[&memory, &pids]) {
                return Detected {
                    driver: None,
                    version: Some(super::Version::V1),
                    detail: format!("v1 hierarchies are not writable here ({e}); sandboxes run without cgroups"),
                    delegated: false,
                };
            }
            let v1 = V1 { memory, pids, cpu: dir_for("cpu") };
            Detected {
                detail: format!("v1 (controllers: {})", v1.controllers().join(", ")),
                driver: Some(Box::new(v1)),
                version: Some(super::Version::V1),
                delegated: false,
            }
        }
        _ => Detected {
            driver: None,
            version: None,
            detail: "neither a cgroup v2 hierarchy with memory and pids controllers nor v1 memory and pids hierarchies"
                .into(),
            delegated: false,
        },
    }
}

/// Creates and removes a child group in each of `dirs` (creating the dirs themselves as needed).
fn probe_writable(dirs: &[&Path]) -> io::Result<()> {
    for dir in dirs {
        std::fs::create_dir_all(dir).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        let probe = dir.join(format!("probe-{}", std::process::id()));
        std::fs::create_dir(&probe).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", probe.display())))?;
        let _ = std::fs::remove_dir(&probe);
    }
    Ok(())
}

/// Prepares a delegated v2 subtree: this process moves into `<ours>/supervisor` so `<ours>` has
/// no member and may enable controllers for its children; slots go under `<ours>/<name>`.
fn prepare_v2(ours: &Path, name: &str, cpu: bool) -> io::Result<V2> {
    let me = std::process::id();
    let others: Vec<u32> = read_pids(&ours.join("cgroup.procs"))?.into_iter().filter(|p| *p != me).collect();
    if !others.is_empty() {
        return Err(io::Error::other(format!(
            "other processes share its cgroup ({} of them); run it as the systemd service (Delegate=yes)",
            others.len()
        )));
    }
    let controllers = if cpu { "+memory +pids +cpu" } else { "+memory +pids" };
    let leaf = ours.join("supervisor");
    std::fs::create_dir_all(&leaf)?;
    if !read_pids(&ours.join("cgroup.procs"))?.is_empty() {
        write(&leaf.join("cgroup.procs"), &me.to_string())?;
    }
    write(&ours.join("cgroup.subtree_control"), controllers)?;
    let base = ours.join(name);
    std::fs::create_dir_all(&base)?;
    write(&base.join("cgroup.subtree_control"), controllers)?;
    Ok(V2 { base, cpu })
}

/// This process's pid namespace (the inode of `/proc/self/ns/pid`), which the names of its
/// cgroup directories carry: a pid means something only inside its namespace.
pub fn pid_namespace() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

/// The name of a supervisor's cgroup directory: `<prefix><pid>-<instance>-ns<pid namespace>`.
pub fn dir_name(prefix: &str, pid: u32, instance: u64, namespace: u64) -> String {
    format!("{prefix}{pid}-{instance}-ns{namespace}")
}

/// The pid of the supervisor that made the directory `name`, when that supervisor was in
/// `namespace` too: only then does "no such pid" mean it is gone. A directory of another pid
/// namespace (another container's supervisor, whose pid may well be alive there), of the old
/// unqualified form, or naming pid 0 is never claimed.
fn owner_in(name: &str, prefix: &str, namespace: u64) -> Option<u32> {
    let mut parts = name.strip_prefix(prefix)?.split('-');
    let (pid, instance, ns) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || instance.parse::<u64>().is_err() {
        return None;
    }
    let pid = pid.parse::<u32>().ok().filter(|&p| p != 0)?;
    (ns.strip_prefix("ns")?.parse::<u64>().ok()? == namespace).then_some(pid)
}

/// Removes what crashed earlier supervisors of this pid namespace left behind: sibling
/// directories named by [`dir_name`] whose supervisor no longer exists (their members are killed
/// first). Returns how many went.
pub fn sweep_stale(driver: &dyn Cgroups, prefix: &str) -> usize {
    let Some(namespace) = pid_namespace() else { return 0 };
    let mut removed = 0;
    for base in driver.base() {
        let Some(parent) = base.parent() else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(pid) = file_name.to_str().and_then(|n| owner_in(n, prefix, namespace)) else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let dir = entry.path();
            if let Ok(slots) = std::fs::read_dir(&dir) {
                for slot in slots.flatten().filter(|s| s.path().is_dir()) {
                    let _ = read_pids(&slot.path().join("cgroup.procs")).and_then(|p| kill_pids(&p));
                    let _ = remove_dir(&slot.path());
                }
            }
            if remove_dir(&dir).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn only_directories_of_this_pid_namespace_are_claimed() {
        let p = "alga-runner.";
        assert_eq!(dir_name(p, 42, 3, 4026531836), "alga-runner.42-3-ns4026531836");
        assert_eq!(owner_in("alga-runner.42-3-ns4026531836", p, 4026531836), Some(42));
        for other in [
            "alga-runner.42-3-ns4026531999", // another container's supervisor
            "alga-runner.42-3",              // the old form: whose pid it is cannot be told
            "alga-runner.0-3-ns4026531836",  // pid 0 is nobody's
            "alga-runner.42-x-ns4026531836",
            "alga-runner.42-3-ns4026531836-9",
            "other.42-3-ns4026531836",
        ] {
            assert_eq!(owner_in(other, p, 4026531836), None, "{other}");
        }
        assert!(pid_namespace().is_some(), "this host has /proc/self/ns/pid");
    }

    #[test]
    fn parses_hybrid_mounts() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(m.len(), 4);
        assert!(m[0].v2);
        assert_eq!(m[3].mount_point, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(m[3].controllers, vec!["cpu", "cpuacct"]);
    }

    #[test]
    fn v1_slots_live_under_our_own_cgroups() {
        let own = parse_proc_cgroup("4:memory:/svc/a\n3:pids:/svc\n2:cpu,cpuacct:/\n0::/\n");
        let d = detect_from(&parse_mountinfo(HYBRID), &own, "alga-runner.7", true);
        let driver = d.driver.expect(&d.detail);
        assert_eq!(driver.version(), Version::V1);
        assert_eq!(
            driver.base(),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/svc/a/alga-runner.7"),
                PathBuf::from("/sys/fs/cgroup/pids/svc/alga-runner.7"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/alga-runner.7"),
            ]
        );
    }

    #[test]
    fn without_memory_controller_there_is_no_driver() {
        let mounts = parse_mountinfo("31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n");
        let d = detect_from(&mounts, &parse_proc_cgroup("0::/\n"), "x", true);
        assert!(d.driver.is_none());
        assert!(d.detail.contains("neither"), "{}", d.detail);
    }

    #[test]
    fn v2_prepares_a_delegated_subtree_on_a_fake_hierarchy() {
        let tmp = tempfile::tempdir().unwrap();
        let ours = tmp.path().join("svc");
        std::fs::create_dir_all(&ours).unwrap();
        std::fs::write(ours.join("cgroup.controllers"), "cpu memory pids").unwrap();
        std::fs::write(ours.join("cgroup.procs"), format!("{}\n", std::process::id())).unwrap();
        let mounts = vec![CgroupMount { mount_point: tmp.path().to_path_buf(), v2: true, controllers: vec![] }];
        let own = parse_proc_cgroup("0::/svc\n");
        let d = detect_from(&mounts, &own, "alga-runner.9", true);
        let driver = d.driver.expect(&d.detail);
        assert_eq!(driver.version(), Version::V2);
        assert!(d.delegated);
        let read = |p: &str| std::fs::read_to_string(ours.join(p)).unwrap();
        assert_eq!(read("supervisor/cgroup.procs"), std::process::id().to_string(), "moved itself to a leaf");
        assert_eq!(read("cgroup.subtree_control"), "+memory +pids +cpu");
        assert_eq!(read("alga-runner.9/cgroup.subtree_control"), "+memory +pids +cpu");

        // Another process in the same cgroup: not delegated, nothing touched.
        let ours2 = tmp.path().join("shared");
        std::fs::create_dir_all(&ours2).unwrap();
        std::fs::write(ours2.join("cgroup.controllers"), "memory pids").unwrap();
        std::fs::write(ours2.join("cgroup.procs"), "1\n").unwrap();
        let d = detect_from(&mounts, &parse_proc_cgroup("0::/shared\n"), "x", true);
        assert!(d.driver.is_none());
        assert!(d.detail.contains("Delegate=yes"), "{}", d.detail);
    }
}
