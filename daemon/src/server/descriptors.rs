//! File descriptors: connections and the store share the process's one limit.
//!
//! Every connection holds a descriptor, and so does every file RocksDB has open
//! (its tables, the write-ahead log, the MANIFEST). When connections take the last
//! descriptor, RocksDB cannot create its next log or table file, and its writes fail
//! until the store is reopened. So at start-up the daemon
//!
//! 1. raises its soft limit on open files to the hard limit, where the system lets
//!    it ([`raise_limit`]; many systems start processes at a soft limit of 1024 with
//!    a hard one far above), and
//! 2. caps connections below what is left once the descriptors open by then (the
//!    store's files, the listener, the runtime's) and [`STORE_RESERVE`] more for the
//!    store are counted ([`connection_cap`]).

use crate::Error;
use crate::config::DEFAULT_MAX_CONNECTIONS;

/// Descriptors kept free for the store beyond those open at start-up: RocksDB opens
/// a new log at every memtable switch and new table files at every flush and
/// compaction while the old ones are still open (a compaction of the 32 level-0
/// files it gathers writes a few outputs), and reads snapshots and its own options
/// files. 256 covers several of those at once with room to spare.
pub const STORE_RESERVE: u64 = 256;

/// The process's limit on open files, and what was done to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// The soft limit now (`None`: unlimited).
    pub soft: Option<u64>,
    /// The hard limit (`None`: unlimited).
    pub hard: Option<u64>,
    /// The soft limit before it was raised, if it was.
    pub raised_from: Option<u64>,
}

/// Raises the soft limit on open files to the hard one, where allowed; what it is
/// afterwards. A refusal (a hard limit the kernel will not grant, as macOS's
/// `OPEN_MAX`) leaves the limit as it was, logged.
#[must_use]
pub fn raise_limit() -> Limit {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let mut limit = Limit {
        soft: before.current,
        hard: before.maximum,
        raised_from: None,
    };
    if let (Some(soft), Some(hard)) = (before.current, before.maximum)
        && soft < hard
    {
        let raised = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                limit.soft = Some(hard);
                limit.raised_from = Some(soft);
            }
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the limit on open files");
            }
        }
    }
    limit
}

/// Descriptors this process has open now (`/proc/self/fd`); `None` where that
/// cannot be read.
#[must_use]
pub fn open_now() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|entries| entries.count() as u64)
}

/// The connection cap: `asked` (the `max_connections` setting), or by default
/// [`DEFAULT_MAX_CONNECTIONS`] or what the limit leaves if that is less, with a
/// warning then. `in_use` descriptors are open now.
///
/// # Errors
///
/// [`Error::Config`] naming `max_connections` when the limit cannot hold `asked`
/// connections beside `in_use` and [`STORE_RESERVE`], or no connection at all.
pub fn connection_cap(
    asked: Option<usize>,
    limit: Limit,
    in_use: u64,
) -> Result<(usize, Option<String>), Error> {
    let Some(soft) = limit.soft else {
        return Ok((asked.unwrap_or(DEFAULT_MAX_CONNECTIONS), None));
    };
    let room = soft.saturating_sub(in_use).saturating_sub(STORE_RESERVE);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    let hard = limit
        .hard
        .map_or_else(|| "unlimited".to_owned(), |h| h.to_string());
    let explain = format!(
        "the limit on open files is {soft} (hard: {hard}), {in_use} are open at start-up \
         and {STORE_RESERVE} are kept for the store"
    );
    match asked {
        Some(n) if n > room => Err(Error::Config {
            setting: "max_connections",
            reason: format!(
                "{n} connections do not fit: {explain}, which leaves room for {room}; lower \
                 max_connections or raise the limit (ulimit -n, or LimitNOFILE= in the \
                 systemd unit)"
            ),
        }),
        Some(n) => Ok((n, None)),
        None if room == 0 => Err(Error::Config {
            setting: "max_connections",
            reason: format!("no connection fits: {explain}; raise the limit (ulimit -n)"),
        }),
        None if room < DEFAULT_MAX_CONNECTIONS => Ok((
            room,
            Some(format!(
                "max_connections is {room}, under its default of {DEFAULT_MAX_CONNECTIONS}: \
                 {explain}; raise the limit for more"
            )),
        )),
        None => Ok((DEFAULT_MAX_CONNECTIONS, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn limit(soft: u64) -> Limit {
        Limit {
            soft: Some(soft),
            hard: Some(soft),
            raised_from: None,
        }
    }

    #[test]
    fn the_default_cap_leaves_the_store_its_reserve() {
        assert_eq!(
            connection_cap(None, limit(1 << 20), 50).unwrap(),
            (DEFAULT_MAX_CONNECTIONS, None)
        );
        let (cap, warning) = connection_cap(None, limit(1024), 50).unwrap();
        assert_eq!(cap, 1024 - 50 - STORE_RESERVE as usize);
        assert!(warning.unwrap().contains("limit on open files is 1024"));
        assert!(connection_cap(None, limit(300), 50).is_err());
    }

    #[test]
    fn an_asked_cap_over_the_limit_is_refused() {
        assert_eq!(connection_cap(Some(700), limit(1024), 50).unwrap().0, 700);
        let Err(Error::Config { setting, reason }) = connection_cap(Some(800), limit(1024), 50)
        else {
            panic!("800 connections cannot fit");
        };
        assert_eq!(setting, "max_connections");
        assert!(reason.contains("leaves room for 718"), "{reason}");
    }

    #[test]
    fn raising_never_lowers() {
        let before = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let after = raise_limit();
        assert!(after.soft >= before.current || after.soft.is_none());
        assert_eq!(after.hard, before.maximum);
        assert!(open_now().is_none_or(|n| n > 2));
    }
}
