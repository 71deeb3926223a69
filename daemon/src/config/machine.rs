//! What the machine gives the daemon, for the defaults derived from it: the memory
//! the process may use, of which the filter budget (`max_filter_bytes`) and the
//! budget of request bodies in flight (`max_body_bytes_in_flight`) take shares.
//!
//! The limit is the smallest of the machine's memory (`MemTotal` in `/proc/meminfo`)
//! and every memory limit of the control groups the process is in: cgroup v2's
//! `memory.max`, and cgroup v1's `memory.limit_in_bytes`, of the process's own group
//! and of each group above it (a limit on a parent slice binds its children too).
//! Where none of them can be read (not Linux), the limit is [`FALLBACK_MEMORY`].

use std::path::{Path, PathBuf};

/// The share of the memory limit that the filters may be charged by default: half.
/// The other half is for everything else the daemon holds: RocksDB's block cache and
/// memtables (`cache_bytes`, 128 MiB by default), request bodies (at most
/// `max_body_bytes_in_flight`, an eighth by default, see [`BODY_SHARE_DIVISOR`]),
/// connection buffers and answers, RocksDB's memory outside its cache, and the page
/// cache the store's reads rely on.
pub const FILTER_SHARE_DIVISOR: u64 = 2;

/// The share of the memory limit that request bodies in flight may hold by default:
/// an eighth, at most [`MAX_DEFAULT_BODY_BUDGET`]. In the 768 MiB container of the
/// issue that once OOM-killed a daemon with 186 bodies of 4 MiB, that is 96 MiB:
/// with half for the filters and 128 MiB for RocksDB's cache, 160 MiB stay free.
pub const BODY_SHARE_DIVISOR: u64 = 8;

/// The most the default body budget takes: 256 MiB, 64 bodies of the default 4 MiB
/// `max_body_bytes` at once, or some 6,000 batches of 1,000 IDs (about 40 KiB each),
/// far more than `max_concurrency` (256) requests hold. A larger machine gains
/// nothing from more, and an attacker's bodies would only pin more memory.
pub const MAX_DEFAULT_BODY_BUDGET: u64 = 256 << 20;

/// The memory assumed when no limit can be read: 8 GiB, so that the default budget
/// is 4 GiB.
pub const FALLBACK_MEMORY: u64 = 8 << 30;

/// Where the memory limit came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemorySource {
    /// A control group's limit (the file it was read from).
    Cgroup(PathBuf),
    /// The machine's memory (`MemTotal`).
    MemTotal,
    /// Nothing could be read: [`FALLBACK_MEMORY`].
    Fallback,
}

/// The memory the process may use, and where that figure came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    /// Bytes.
    pub bytes: u64,
    /// Its source.
    pub source: MemorySource,
}

impl MemoryLimit {
    /// The limit of this process, read from `/proc` and `/sys/fs/cgroup`.
    #[must_use]
    pub fn of_this_process() -> Self {
        let read = |p: &Path| std::fs::read_to_string(p).ok();
        let mut best = read(Path::new("/proc/meminfo"))
            .as_deref()
            .and_then(mem_total)
            .map(|bytes| Self {
                bytes,
                source: MemorySource::MemTotal,
            });
        let groups = read(Path::new("/proc/self/cgroup")).unwrap_or_default();
        for file in limit_files(Path::new("/sys/fs/cgroup"), &groups) {
            if let Some(bytes) = read(&file).as_deref().and_then(cgroup_limit)
                && best.as_ref().is_none_or(|b| bytes < b.bytes)
            {
                best = Some(Self {
                    bytes,
                    source: MemorySource::Cgroup(file),
                });
            }
        }
        best.unwrap_or(Self {
            bytes: FALLBACK_MEMORY,
            source: MemorySource::Fallback,
        })
    }

    /// The default filter budget under this limit.
    #[must_use]
    pub const fn default_filter_budget(&self) -> u64 {
        self.bytes / FILTER_SHARE_DIVISOR
    }

    /// The default budget of request bodies in flight under this limit: an eighth of
    /// it, at most [`MAX_DEFAULT_BODY_BUDGET`], and never less than one body of
    /// `max_body_bytes` (or no body of the largest size allowed could be read).
    #[must_use]
    pub fn default_body_budget(&self, max_body_bytes: u64) -> u64 {
        (self.bytes / BODY_SHARE_DIVISOR)
            .min(MAX_DEFAULT_BODY_BUDGET)
            .max(max_body_bytes)
    }
}

impl std::fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let size = super::units::human_bytes(self.bytes);
        match &self.source {
            MemorySource::Cgroup(file) => write!(f, "{size} (the limit in {})", file.display()),
            MemorySource::MemTotal => write!(f, "{size} (the machine's memory, MemTotal)"),
            MemorySource::Fallback => write!(f, "{size} (assumed: no limit could be read)"),
        }
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// A control group's memory limit: a number of bytes; `max` (v2) or a number near
/// `i64::MAX` rounded to pages (v1's "unlimited") is no limit.
fn cgroup_limit(text: &str) -> Option<u64> {
    let bytes: u64 = text.trim().parse().ok()?;
    (bytes < 1 << 62).then_some(bytes)
}

/// The limit files that may bind a process in the groups `proc_cgroup` lists (the
/// text of `/proc/self/cgroup`), under the hierarchy mounted at `root`: its own
/// group's and each ancestor's, for v2 (`0::/path`) and for v1's memory controller
/// (`N:memory:/path`). Inside a container the group's path is often that of the
/// host while the mount shows the container's own group as its root, so the root's
/// files are always among them.
fn limit_files(root: &Path, proc_cgroup: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut add = |base: PathBuf, group: &str, file: &str| {
        let mut dir = base.clone();
        dir.extend(group.split('/').filter(|s| !s.is_empty()));
        loop {
            files.push(dir.join(file));
            if dir == base || !dir.pop() {
                break;
            }
        }
    };
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(group)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            add(root.to_owned(), group, "memory.max");
        } else if controllers.split(',').any(|c| c == "memory") {
            add(root.join("memory"), group, "memory.limit_in_bytes");
        }
    }
    files.push(root.join("memory.max"));
    files.push(root.join("memory").join("memory.limit_in_bytes"));
    files.sort();
    files.dedup();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_cgroup_files_parse() {
        assert_eq!(
            mem_total("MemTotal:       24684092 kB\nMemFree: 1 kB\n"),
            Some(24_684_092 * 1024)
        );
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(cgroup_limit("max\n"), None);
        assert_eq!(cgroup_limit("9223372036854771712\n"), None);
        assert_eq!(cgroup_limit("2147483648\n"), Some(2 << 30));
    }

    #[test]
    fn the_limit_files_cover_the_group_and_its_ancestors() {
        let files = limit_files(
            Path::new("/sys/fs/cgroup"),
            "4:memory:/a/b\n0::/system.slice/oncelyd.service\n",
        );
        let has = |p: &str| files.contains(&PathBuf::from(p));
        assert!(has(
            "/sys/fs/cgroup/system.slice/oncelyd.service/memory.max"
        ));
        assert!(has("/sys/fs/cgroup/system.slice/memory.max"));
        assert!(has("/sys/fs/cgroup/memory.max"));
        assert!(has("/sys/fs/cgroup/memory/a/b/memory.limit_in_bytes"));
        assert!(has("/sys/fs/cgroup/memory/a/memory.limit_in_bytes"));
        assert!(has("/sys/fs/cgroup/memory/memory.limit_in_bytes"));
        assert_eq!(files.len(), 6, "{files:?}");
    }

    #[test]
    fn the_body_budget_is_an_eighth_of_memory_capped_and_holds_one_body() {
        let limit = |bytes| MemoryLimit {
            bytes,
            source: MemorySource::MemTotal,
        };
        // The 768 MiB container.
        assert_eq!(limit(768 << 20).default_body_budget(4 << 20), 96 << 20);
        assert_eq!(limit(24 << 30).default_body_budget(4 << 20), 256 << 20);
        // A tiny machine still reads one whole body of the largest size.
        assert_eq!(limit(16 << 20).default_body_budget(4 << 20), 4 << 20);
        assert_eq!(limit(24 << 30).default_body_budget(1 << 30), 1 << 30);
    }

    #[test]
    fn the_limit_of_this_process_is_the_smallest_found() {
        let limit = MemoryLimit::of_this_process();
        assert!(limit.bytes > 0);
        assert_eq!(limit.default_filter_budget(), limit.bytes / 2);
        let body = limit.default_body_budget(4 << 20);
        assert!(
            (4 << 20..=MAX_DEFAULT_BODY_BUDGET).contains(&body),
            "{body}"
        );
        if let Some(total) = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .as_deref()
            .and_then(mem_total)
        {
            assert!(limit.bytes <= total, "{limit}");
        }
    }
}
