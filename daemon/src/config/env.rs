//! Settings from `ONCELY_*` environment variables.
//!
//! Every variable whose name starts with `ONCELY_` must be one of the settings'
//! variables ([`super::SETTINGS`]), [`TOKEN`], or one that other Oncely programs
//! read ([`OTHER_PROGRAMS`], [`HARNESS_PREFIXES`]); anything else stops start-up,
//! naming the variable and the setting it probably meant, so that a typo never
//! leaves a setting (above all, authentication) silently at its default.

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;

use super::{ByteSize, Layer, SETTINGS, parse_duration};
use crate::Error;

/// One bearer token, taken whole: the variable `oncelyd load` and the client
/// examples read, so that one environment serves the daemon and its clients alike.
pub const TOKEN: &str = "ONCELY_TOKEN";

/// Variables other Oncely programs read, which `oncelyd serve` ignores: the URL the
/// client examples connect to, and where the test kit finds PostgreSQL's programs.
pub const OTHER_PROGRAMS: [&str; 2] = ["ONCELY_URL", "ONCELY_PG_BINDIR"];

/// Prefixes of the variables the test and benchmark harnesses read (`ONCELY_SOAK_SECS`,
/// `ONCELY_BENCH_DIR`, ...), which `oncelyd serve` ignores.
pub const HARNESS_PREFIXES: [&str; 3] = ["ONCELY_BENCH_", "ONCELY_SOAK_", "ONCELY_CRASH_"];

/// What the environment gives: settings, and the configuration file's path.
#[derive(Debug, Default, PartialEq)]
pub struct FromEnv {
    /// The settings given.
    pub layer: Layer,
    /// `ONCELY_CONFIG`.
    pub config: Option<PathBuf>,
    /// Whether [`TOKIO_WORKER_THREADS`] is set: tokio's own variable, which the
    /// daemon does not read (`worker_threads` is its setting).
    pub tokio_worker_threads: bool,
}

/// Tokio's variable for its default worker count.
pub const TOKIO_WORKER_THREADS: &str = "TOKIO_WORKER_THREADS";

/// Reads the `ONCELY_*` variables among `vars` (for the daemon, the process's
/// environment; tests pass their own).
///
/// `ONCELY_TOKENS` and `ONCELY_ALLOWED_ORIGINS` are comma-separated lists (blanks
/// around each item are dropped); `ONCELY_TOKEN` adds one token, taken whole.
///
/// # Errors
///
/// [`Error::UnknownVariables`] naming every unknown `ONCELY_*` variable,
/// [`Error::Config`] for a value that does not parse (naming the setting).
pub fn read(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Result<FromEnv, Error> {
    let mut out = FromEnv::default();
    let mut unknown = Vec::new();
    let mut single_token = None;
    for (name, value) in vars {
        if name == TOKIO_WORKER_THREADS {
            out.tokio_worker_threads = true;
            continue;
        }
        let Some(name) = name.to_str() else {
            if name.as_encoded_bytes().starts_with(b"ONCELY_") {
                unknown.push(format!("{} (not UTF-8)", name.to_string_lossy()));
            }
            continue;
        };
        if !name.starts_with("ONCELY_")
            || OTHER_PROGRAMS.contains(&name)
            || HARNESS_PREFIXES.iter().any(|p| name.starts_with(p))
        {
            continue;
        }
        let l = &mut out.layer;
        match name {
            "ONCELY_LISTEN" => l.listen = Some(parse("listen", name, value)?),
            "ONCELY_RESP_LISTEN" => l.resp_listen = Some(parse("resp_listen", name, value)?),
            "ONCELY_RESP_NAMESPACE" => {
                l.resp_namespace = Some(utf8("resp_namespace", name, value)?);
            }
            "ONCELY_TLS_CERT" => l.tls_cert = Some(utf8("tls_cert", name, value)?.into()),
            "ONCELY_TLS_KEY" => l.tls_key = Some(utf8("tls_key", name, value)?.into()),
            "ONCELY_DATA_DIR" => l.data_dir = Some(utf8("data_dir", name, value)?.into()),
            "ONCELY_STORE" => l.store = Some(store(name, value)?),
            "ONCELY_STORE_POOL_SIZE" => {
                l.store_pool_size = Some(parse("store_pool_size", name, value)?);
            }
            "ONCELY_CONFIG" => out.config = Some(utf8("config", name, value)?.into()),
            "ONCELY_TOKENS" => l.tokens = Some(list(&utf8("tokens", name, value)?)),
            TOKEN => single_token = Some(utf8("tokens", name, value)?),
            "ONCELY_ALLOWED_ORIGINS" => {
                l.allowed_origins = Some(list(&utf8("allowed_origins", name, value)?));
            }
            "ONCELY_DURABILITY" => l.durability = Some(parse("durability", name, value)?),
            "ONCELY_MAX_BODY_BYTES" => {
                l.max_body_bytes = Some(parse::<ByteSize>("max_body_bytes", name, value)?);
            }
            "ONCELY_MAX_BODY_BYTES_IN_FLIGHT" => {
                l.max_body_bytes_in_flight =
                    Some(parse::<ByteSize>("max_body_bytes_in_flight", name, value)?);
            }
            "ONCELY_MAX_IDS" => l.max_ids = Some(parse("max_ids", name, value)?),
            "ONCELY_MAX_CONCURRENCY" => {
                l.max_concurrency = Some(parse("max_concurrency", name, value)?);
            }
            "ONCELY_TRACKER_TIMEOUT" => {
                l.tracker_timeout = Some(duration("tracker_timeout", name, value)?);
            }
            "ONCELY_BODY_READ_TIMEOUT" => {
                l.body_read_timeout = Some(duration("body_read_timeout", name, value)?);
            }
            "ONCELY_HEADER_READ_TIMEOUT" => {
                l.header_read_timeout = Some(duration("header_read_timeout", name, value)?);
            }
            "ONCELY_IDLE_TIMEOUT" => l.idle_timeout = Some(duration("idle_timeout", name, value)?),
            "ONCELY_MAX_CONNECTIONS" => {
                l.max_connections = Some(parse("max_connections", name, value)?);
            }
            "ONCELY_MAX_FILTER_BYTES" => {
                l.max_filter_bytes = Some(parse("max_filter_bytes", name, value)?);
            }
            "ONCELY_WORKER_THREADS" => {
                l.worker_threads = Some(parse("worker_threads", name, value)?);
            }
            "ONCELY_MAX_NAMESPACES" => {
                l.max_namespaces = Some(parse("max_namespaces", name, value)?);
            }
            "ONCELY_CACHE_BYTES" => l.cache_bytes = Some(parse("cache_bytes", name, value)?),
            "ONCELY_MEMTABLE_BYTES" => {
                l.memtable_bytes = Some(parse("memtable_bytes", name, value)?);
            }
            "ONCELY_SHUTDOWN_GRACE" => {
                l.shutdown_grace = Some(duration("shutdown_grace", name, value)?);
            }
            "ONCELY_DRAIN_DELAY" => l.drain_delay = Some(duration("drain_delay", name, value)?),
            "ONCELY_LOG_FORMAT" => l.log_format = Some(parse("log_format", name, value)?),
            _ => unknown.push(match suggest(name) {
                Some(known) => format!("{name} (did you mean {known}?)"),
                None => name.to_owned(),
            }),
        }
    }
    if !unknown.is_empty() {
        unknown.sort();
        return Err(Error::UnknownVariables(unknown));
    }
    if let Some(token) = single_token {
        out.layer.tokens.get_or_insert_with(Vec::new).push(token);
    }
    Ok(out)
}

fn utf8(setting: &'static str, name: &str, value: OsString) -> Result<String, Error> {
    value.into_string().map_err(|_| Error::Config {
        setting,
        reason: format!("{name} is not valid UTF-8"),
    })
}

fn parse<T: FromStr>(setting: &'static str, name: &str, value: OsString) -> Result<T, Error>
where
    T::Err: std::fmt::Display,
{
    let value = utf8(setting, name, value)?;
    value.trim().parse().map_err(|e| Error::Config {
        setting,
        reason: format!("{name}={value:?}: {e}"),
    })
}

/// A store URL; unlike other values, never echoed (it may hold a password).
fn store(name: &str, value: OsString) -> Result<super::StoreUrl, Error> {
    utf8("store", name, value)?
        .parse()
        .map_err(|reason: String| Error::Config {
            setting: "store",
            reason: format!("{name}: {reason}"),
        })
}

fn duration(
    setting: &'static str,
    name: &str,
    value: OsString,
) -> Result<oncely::HumanDuration, Error> {
    let value = utf8(setting, name, value)?;
    parse_duration(&value).map_err(|e| Error::Config {
        setting,
        reason: format!("{name}={value:?}: {e}"),
    })
}

/// A comma-separated list. Empty items are kept, so that validation refuses them
/// (`ONCELY_TOKENS=` is a mistake, not "no tokens").
fn list(value: &str) -> Vec<String> {
    value.split(',').map(|s| s.trim().to_owned()).collect()
}

/// The known variable closest to `name`, when it is close enough to be a typo.
fn suggest(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    SETTINGS
        .iter()
        .map(|s| s.env)
        .chain([TOKEN])
        .map(|known| (edit_distance(&upper, known), known))
        .filter(|&(d, _)| d <= 3)
        .min()
        .map(|(_, known)| known)
}

/// Levenshtein distance over bytes (the names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.as_bytes().iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn every_setting_reads_from_its_variable() {
        let env = read(vars(&[
            ("ONCELY_LISTEN", "127.0.0.1:9"),
            ("ONCELY_DATA_DIR", "/d"),
            ("ONCELY_TLS_CERT", "/etc/oncely/cert.pem"),
            ("ONCELY_TLS_KEY", "/etc/oncely/key.pem"),
            ("ONCELY_STORE", "postgres://o:pw@db1:5432,db2:5432/app"),
            ("ONCELY_STORE_POOL_SIZE", "8"),
            ("ONCELY_CONFIG", "/c.toml"),
            ("ONCELY_TOKENS", "aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb"),
            (
                "ONCELY_ALLOWED_ORIGINS",
                "https://a.example,https://b.example",
            ),
            ("ONCELY_DURABILITY", "sync"),
            ("ONCELY_MAX_BODY_BYTES", "1MiB"),
            ("ONCELY_MAX_BODY_BYTES_IN_FLIGHT", "64MiB"),
            ("ONCELY_MAX_IDS", "5"),
            ("ONCELY_MAX_CONCURRENCY", "9"),
            ("ONCELY_CACHE_BYTES", "64MiB"),
            ("ONCELY_MEMTABLE_BYTES", "32MiB"),
            ("ONCELY_SHUTDOWN_GRACE", "3s"),
            ("ONCELY_DRAIN_DELAY", "250 ms"),
            ("ONCELY_TRACKER_TIMEOUT", "2s"),
            ("ONCELY_BODY_READ_TIMEOUT", "3s"),
            ("ONCELY_HEADER_READ_TIMEOUT", "4s"),
            ("ONCELY_IDLE_TIMEOUT", "5s"),
            ("ONCELY_MAX_CONNECTIONS", "100"),
            ("ONCELY_MAX_FILTER_BYTES", "2GiB"),
            ("ONCELY_MAX_NAMESPACES", "12"),
            ("ONCELY_WORKER_THREADS", "3"),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        let l = &env.layer;
        assert_eq!(l.listen, Some("127.0.0.1:9".parse().unwrap()));
        assert_eq!(l.data_dir, Some(PathBuf::from("/d")));
        assert_eq!(l.tls_cert, Some(PathBuf::from("/etc/oncely/cert.pem")));
        assert_eq!(l.tls_key, Some(PathBuf::from("/etc/oncely/key.pem")));
        assert_eq!(
            l.store.as_ref().map(super::super::StoreUrl::expose),
            Some("postgres://o:pw@db1:5432,db2:5432/app")
        );
        assert_eq!(l.store_pool_size, Some(8));
        assert_eq!(env.config, Some(PathBuf::from("/c.toml")));
        assert_eq!(
            l.tokens.as_deref(),
            Some(&["aaaaaaaaaaaaaaaa".to_owned(), "bbbbbbbbbbbbbbbb".to_owned()][..])
        );
        assert_eq!(l.allowed_origins.as_ref().map(Vec::len), Some(2));
        assert_eq!(l.durability, Some(oncely::Durability::Sync));
        assert_eq!(l.max_body_bytes, Some(ByteSize(1 << 20)));
        assert_eq!(l.max_body_bytes_in_flight, Some(ByteSize(64 << 20)));
        assert_eq!(l.max_ids, Some(5));
        assert_eq!(l.max_concurrency, Some(9));
        assert_eq!(l.cache_bytes, Some(ByteSize(64 << 20)));
        assert_eq!(l.memtable_bytes, Some(ByteSize(32 << 20)));
        assert_eq!(l.shutdown_grace.map(|d| d.0), Some(Duration::from_secs(3)));
        assert_eq!(l.drain_delay.map(|d| d.0), Some(Duration::from_millis(250)));
        assert_eq!(l.tracker_timeout.map(|d| d.0), Some(Duration::from_secs(2)));
        assert_eq!(
            l.body_read_timeout.map(|d| d.0),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            l.header_read_timeout.map(|d| d.0),
            Some(Duration::from_secs(4))
        );
        assert_eq!(l.idle_timeout.map(|d| d.0), Some(Duration::from_secs(5)));
        assert_eq!(l.max_connections, Some(100));
        assert_eq!(l.max_filter_bytes, Some(ByteSize(2 << 30)));
        assert_eq!(l.max_namespaces, Some(12));
        assert_eq!(l.worker_threads, Some(3));
    }

    #[test]
    fn every_listed_variable_is_read() {
        for s in SETTINGS {
            let value = match s.key {
                "listen" | "resp_listen" => "127.0.0.1:1",
                "store" => "postgres://db/app",
                "durability" => "flush",
                "shutdown_grace"
                | "drain_delay"
                | "tracker_timeout"
                | "body_read_timeout"
                | "header_read_timeout"
                | "idle_timeout" => "1s",
                _ => "1",
            };
            let got = read(vars(&[(s.env, value)]));
            assert!(
                !matches!(got, Err(Error::UnknownVariables(_))),
                "{} is listed but not read: {got:?}",
                s.env
            );
        }
    }

    #[test]
    fn the_single_token_variable_adds_one_token_whole() {
        let env = read(vars(&[("ONCELY_TOKEN", "x,correct-horse-battery")])).unwrap();
        assert_eq!(
            env.layer.tokens,
            Some(vec!["x,correct-horse-battery".to_owned()])
        );
        let env = read(vars(&[
            ("ONCELY_TOKEN", "cccccccccccccccc"),
            ("ONCELY_TOKENS", "aaaaaaaaaaaaaaaa"),
        ]))
        .unwrap();
        assert_eq!(env.layer.tokens.map(|t| t.len()), Some(2));
    }

    #[test]
    fn unknown_variables_are_named_with_a_suggestion() {
        let err = read(vars(&[
            ("ONCELY_MAX_ID", "5"),
            ("ONCELY_DATADIR", "/d"),
            ("ONCELY_SOMETHING_ELSE_ENTIRELY", "1"),
        ]))
        .unwrap_err();
        let Error::UnknownVariables(names) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(
            names,
            &[
                "ONCELY_DATADIR (did you mean ONCELY_DATA_DIR?)",
                "ONCELY_MAX_ID (did you mean ONCELY_MAX_IDS?)",
                "ONCELY_SOMETHING_ELSE_ENTIRELY",
            ]
        );
        let err = read(vars(&[("ONCELY_tokens", "x")])).unwrap_err();
        assert!(err.to_string().contains("ONCELY_TOKENS?"), "{err}");
    }

    #[test]
    fn other_programs_variables_are_left_alone() {
        let env = read(vars(&[
            ("ONCELY_URL", "http://127.0.0.1:7070"),
            ("ONCELY_PG_BINDIR", "/usr/lib/postgresql/15/bin"),
            ("ONCELY_SOAK_SECS", "60"),
            ("ONCELY_BENCH_DIR", "/tmp"),
            ("ONCELY_CRASH_SEED", "1"),
        ]))
        .unwrap();
        assert_eq!(env, FromEnv::default());
    }

    #[test]
    fn bad_values_name_the_setting_and_the_variable() {
        for (name, value, setting) in [
            ("ONCELY_MAX_IDS", "many", "max_ids"),
            ("ONCELY_LISTEN", "nowhere", "listen"),
            ("ONCELY_DURABILITY", "fast", "durability"),
            ("ONCELY_SHUTDOWN_GRACE", "soon", "shutdown_grace"),
            ("ONCELY_MEMTABLE_BYTES", "64 parsecs", "memtable_bytes"),
            ("ONCELY_STORE", "./data", "store"),
            ("ONCELY_STORE_POOL_SIZE", "lots", "store_pool_size"),
        ] {
            match read(vars(&[(name, value)])) {
                Err(Error::Config { setting: s, reason }) => {
                    assert_eq!(s, setting);
                    assert!(reason.contains(name), "{reason}");
                }
                other => panic!("{name}={value}: {other:?}"),
            }
        }
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("ONCELY_MAX_ID", "ONCELY_MAX_IDS"), 1);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
