//! The process's own series, Prometheus' standard names (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`), read from `/proc/self` at each scrape. They cover the
//! supervisor only: its sandboxes are other processes (their cost is in the cgroup accounting).

use std::fmt::Write;

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`; 100 on Linux).
fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|t| *t > 0).unwrap_or(100) as f64
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().filter(|p| *p > 0).unwrap_or(4096) as u64
}

/// The fields of `/proc/self/stat` after the command name (which may hold spaces).
fn stat_fields() -> Option<Vec<String>> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat").ok()?.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// The soft limit on open files.
fn max_fds() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok().map(|(soft, _)| soft)
}

/// The series, in the OpenMetrics text format; a value that cannot be read is left out.
pub fn exposition() -> String {
    let mut out = String::new();
    let mut series = |name: &str, kind: &str, help: &str, sample: &str, value: Option<f64>| {
        if let Some(v) = value {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{sample} {v}\n");
        }
    };
    let ticks = ticks_per_second();
    let stat = stat_fields();
    // Fields (1-based, after the name): 14 utime, 15 stime, 22 starttime, 24 rss (pages); here
    // indices from 0 after the `)`: state is field 3 → index 0.
    let field = |n: usize| stat.as_ref().and_then(|f| f.get(n - 3)).and_then(|v| v.parse::<u64>().ok());
    let cpu = field(14).zip(field(15)).map(|(u, s)| (u + s) as f64 / ticks);
    series(
        "process_cpu_seconds",
        "counter",
        "CPU time of the supervisor process, user and system",
        "process_cpu_seconds_total",
        cpu,
    );
    let rss = field(24).map(|pages| (pages * page_size()) as f64);
    series(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of the supervisor process",
        "process_resident_memory_bytes",
        rss,
    );
    let fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
    series("process_open_fds", "gauge", "Open file descriptors of the supervisor process", "process_open_fds", fds);
    series(
        "process_max_fds",
        "gauge",
        "Its limit on open file descriptors",
        "process_max_fds",
        max_fds().map(|m| m as f64),
    );
    let start = field(22).zip(boot_time()).map(|(t, boot)| boot as f64 + t as f64 / ticks);
    series(
        "process_start_time_seconds",
        "gauge",
        "When the supervisor process started, Unix seconds",
        "process_start_time_seconds",
        start,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_series_are_read() {
        let text = exposition();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            let value: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing in:\n{text}"));
            // A process that just started may have used less than one clock tick.
            let least = if name == "process_cpu_seconds_total" { 0.0 } else { f64::MIN_POSITIVE };
            assert!(value >= least, "{name} = {value}");
        }
    }
}
