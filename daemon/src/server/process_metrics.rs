//! The `process_*` families of the Prometheus client libraries' convention, read
//! from `/proc/self` at each scrape (Linux only), and `oncelyd_build_info`.
//!
//! The names, types and units are those every Prometheus client library exports
//! (Go's `collectors.NewProcessCollector`, Python's `ProcessCollector`), so the
//! usual dashboards and alerts work unchanged: open descriptors against their
//! limit matter here, because the daemon caps its connections below that limit to
//! keep descriptors for its store.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Reads the process's figures at each scrape. A figure that cannot be read (a
/// `/proc` without it) is left out rather than reported as 0.
#[derive(Debug, Default)]
pub(super) struct ProcessCollector;

/// What `/proc/self` says about the process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct ProcessFigures {
    pub(super) open_fds: Option<u64>,
    pub(super) max_fds: Option<u64>,
    pub(super) resident_bytes: Option<u64>,
    pub(super) virtual_bytes: Option<u64>,
    pub(super) cpu_seconds: Option<f64>,
    pub(super) start_time_seconds: Option<f64>,
}

/// Clock ticks per second of `/proc`'s times (`USER_HZ`): 100 on every Linux
/// architecture's user ABI, whatever the kernel's own `HZ`; the Prometheus
/// libraries assume it too.
const USER_HZ: f64 = 100.0;

impl ProcessFigures {
    /// Reads them now.
    pub(super) fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let stat = stat.as_deref().and_then(StatFields::parse);
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| boot_time(&s));
        Self {
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count() as u64),
            max_fds: rustix::process::getrlimit(rustix::process::Resource::Nofile).current,
            resident_bytes: status_kib(&status, "VmRSS:").map(|k| k << 10),
            virtual_bytes: status_kib(&status, "VmSize:").map(|k| k << 10),
            cpu_seconds: stat.map(|s| ticks_to_seconds(s.utime + s.stime)),
            start_time_seconds: stat
                .zip(boot_time)
                .map(|(s, boot)| as_f64(boot) + ticks_to_seconds(s.start_ticks)),
        }
    }
}

/// The fields of `/proc/self/stat` used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StatFields {
    pub(super) utime: u64,
    pub(super) stime: u64,
    pub(super) start_ticks: u64,
}

impl StatFields {
    /// Parses `/proc/<pid>/stat`. The command name, field 2, is in parentheses and
    /// may hold spaces and parentheses itself: the fields after it start after the
    /// last `)`. utime, stime and starttime are fields 14, 15 and 22.
    pub(super) fn parse(stat: &str) -> Option<Self> {
        let rest = &stat[stat.rfind(')')? + 1..];
        // `rest` starts with field 3 (state).
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Self {
            utime: field(14)?,
            stime: field(15)?,
            start_ticks: field(22)?,
        })
    }
}

/// A `Name:   123 kB` line of `/proc/self/status`, in KiB.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    line[name.len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The machine's boot time in seconds since the epoch: `btime` of `/proc/stat`.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn ticks_to_seconds(ticks: u64) -> f64 {
    as_f64(ticks) / USER_HZ
}

/// Exact up to 2^53, which no figure here reaches.
#[allow(clippy::cast_precision_loss)]
const fn as_f64(n: u64) -> f64 {
    n as f64
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let p = ProcessFigures::read();
        if let Some(cpu) = p.cpu_seconds {
            let counter = ConstCounter::new(cpu);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        let gauges = [
            (
                "process_open_fds",
                "Number of open file descriptors.",
                p.open_fds.map(as_f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                p.max_fds.map(as_f64),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                p.virtual_bytes.map(as_f64),
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                p.resident_bytes.map(as_f64),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                p.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// `oncelyd_build_info{version="..."} 1`: which build answers, for dashboards
/// that join on it and for spotting a fleet half upgraded.
#[derive(Debug, Default)]
pub(super) struct BuildInfo;

impl Collector for BuildInfo {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "build_info",
            "Always 1: the version of oncelyd answering.",
            None,
            MetricType::Gauge,
        )?;
        let labels = [("version", env!("CARGO_PKG_VERSION"))];
        family.encode_family(&labels)?.encode_gauge(&1_i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_command_name_with_spaces_and_parentheses() {
        // Fields 3.. of a real line, with a hostile command name.
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 9 0 987654 123456789 2345 18446744073709551615";
        assert_eq!(
            StatFields::parse(line),
            Some(StatFields {
                utime: 250,
                stime: 75,
                start_ticks: 987_654,
            })
        );
        assert_eq!(StatFields::parse("garbage"), None);
        assert_eq!(StatFields::parse("1 (x) S 1 2"), None);
    }

    #[test]
    fn status_and_boot_time_lines() {
        let status = "Name:\toncelyd\nVmSize:\t  123456 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(2048));
        assert_eq!(status_kib(status, "VmSize:"), Some(123_456));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_read() {
        let p = ProcessFigures::read();
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
        assert!(p.max_fds.is_some_and(|n| n >= p.open_fds.unwrap()), "{p:?}");
        assert!(p.resident_bytes.is_some_and(|b| b > 1 << 20), "{p:?}");
        assert!(p.virtual_bytes >= p.resident_bytes, "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = p.start_time_seconds.unwrap();
        // Started within the last day, and not in the future (ticks round down).
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "{start} vs {now}"
        );
        assert!(p.cpu_seconds.is_some_and(|s| s >= 0.0), "{p:?}");
    }
}
