//! `oncelyd serve`'s settings: flags, environment and a TOML file, merged.
//!
//! Every setting has one name, used in all three places: `--max-ids` on the command
//! line, `ONCELY_MAX_IDS` in the environment, `max_ids` in the file. A flag wins
//! over the environment (clap reads both, see [`crate::cli::ServeArgs`]), and either
//! wins over the file; what none of them gives takes its default. Namespaces can only
//! be declared in the file (`[namespaces.NAME]` tables, `[namespaces.default]` for
//! the default namespace). `docs/configuration.md` is the reference.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use oncely::{Durability, HumanDuration, NamespaceConfig, NamespaceName, RocksOptions};
use serde::Deserialize;

use crate::Error;
use crate::cli::ServeArgs;

/// The default listen address: loopback only, so that a daemon started without
/// thought is not reachable from the network.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 7070);
/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// The default request body limit: 4 MiB, room for 10,000 IDs of 256 bytes with JSON
/// quoting to spare.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 4 << 20;
/// The default most IDs per request.
pub const DEFAULT_MAX_IDS: usize = 10_000;
/// The default most requests in progress at once; more are shed with 503.
pub const DEFAULT_MAX_CONCURRENCY: usize = 256;
/// The default time in-flight requests get to finish at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A number of bytes written for humans: `4194304`, `4MiB`, `512KiB`, `1GiB`, or
/// decimal `64MB`, `1kB`. Binary units are powers of 1024, decimal ones of 1000.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size like 4194304, 512KiB, 4MiB or 1GiB"))?;
        let per: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "k" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, kB, MB or GB)"
                ));
            }
        };
        n.checked_mul(per)
            .map(Self)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, per) in [("GiB", 1_u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= per && self.0.is_multiple_of(per) {
                return write!(f, "{}{unit}", self.0 / per);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes or a size like \"4MiB\"")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Parses a duration setting (`"10s"`, `"500ms"`, a number of seconds) for clap.
///
/// # Errors
///
/// A message saying what was expected.
pub fn parse_duration(s: &str) -> Result<HumanDuration, String> {
    HumanDuration::parse(s)
}

/// The TOML file's contents. Unknown keys are refused, so a misspelt setting is an
/// error rather than silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `listen`.
    pub listen: Option<SocketAddr>,
    /// `data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `tokens`.
    pub tokens: Option<Vec<String>>,
    /// `durability`.
    pub durability: Option<Durability>,
    /// `max_body_bytes`.
    pub max_body_bytes: Option<ByteSize>,
    /// `max_ids`.
    pub max_ids: Option<usize>,
    /// `max_concurrency`.
    pub max_concurrency: Option<usize>,
    /// `cache_bytes`.
    pub cache_bytes: Option<ByteSize>,
    /// `memtable_bytes`.
    pub memtable_bytes: Option<ByteSize>,
    /// `shutdown_grace`.
    pub shutdown_grace: Option<HumanDuration>,
    /// `[namespaces.NAME]` tables: created or updated at start-up.
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceConfig>,
}

impl FileConfig {
    /// Reads and parses a TOML file.
    ///
    /// # Errors
    ///
    /// [`Error::ConfigFile`] naming the file, with the parser's message (which names
    /// the key and line).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|reason| Error::ConfigFile {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses TOML text.
    ///
    /// # Errors
    ///
    /// The parser's message.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }
}

/// Everything `oncelyd serve` runs with, resolved and validated. (Its `Debug` form
/// shows how many tokens there are, never the tokens.)
#[derive(Clone, PartialEq)]
pub struct Settings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where RocksDB and the filter snapshots live (unused with `memory` durability).
    pub data_dir: PathBuf,
    /// When a mark is acknowledged.
    pub durability: Durability,
    /// Bearer tokens; empty: no authentication.
    pub tokens: Vec<String>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most IDs in one check or check-and-mark.
    pub max_ids: usize,
    /// Most requests in progress at once; more are answered 503 at once.
    pub max_concurrency: usize,
    /// RocksDB's block cache and memtable budgets.
    pub rocks: RocksOptions,
    /// How long in-flight requests get to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Namespaces to create or update at start-up (`default` included, if given).
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// The file the settings were read from, if any.
    pub config_file: Option<PathBuf>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("durability", &self.durability)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_ids", &self.max_ids)
            .field("max_concurrency", &self.max_concurrency)
            .field("rocks", &self.rocks)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("namespaces", &self.namespaces)
            .field("config_file", &self.config_file)
            .finish()
    }
}

impl Default for Settings {
    fn default() -> Self {
        let rocks = RocksOptions::default();
        Self {
            listen: DEFAULT_LISTEN,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            durability: Durability::default(),
            tokens: Vec::new(),
            max_body_bytes: usize::try_from(DEFAULT_MAX_BODY_BYTES).unwrap_or(usize::MAX),
            max_ids: DEFAULT_MAX_IDS,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            rocks,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            namespaces: BTreeMap::new(),
            config_file: None,
        }
    }
}

impl Settings {
    /// Resolves the command line and environment (already merged by clap) with the
    /// file they name, if any.
    ///
    /// # Errors
    ///
    /// [`Error::ConfigFile`] for a file that cannot be read or parsed,
    /// [`Error::Config`] naming the first setting out of range.
    pub fn resolve(args: &ServeArgs) -> Result<Self, Error> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::merge(args, file, args.config.clone())
    }

    /// Merges flags and environment (`args`) over a parsed file, then validates.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first setting out of range.
    pub fn merge(
        args: &ServeArgs,
        file: FileConfig,
        config_file: Option<PathBuf>,
    ) -> Result<Self, Error> {
        let defaults = Self::default();
        let size = |setting: &'static str, v: Option<ByteSize>, default: usize| {
            v.map_or(Ok(default), |b| {
                usize::try_from(b.0).map_err(|_| Error::Config {
                    setting,
                    reason: format!("{b} does not fit in memory"),
                })
            })
        };
        let tokens = if args.tokens.is_empty() {
            file.tokens.unwrap_or_default()
        } else {
            args.tokens.clone()
        };
        let settings = Self {
            listen: args.listen.or(file.listen).unwrap_or(defaults.listen),
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or(defaults.data_dir),
            durability: args
                .durability
                .or(file.durability)
                .unwrap_or(defaults.durability),
            tokens,
            max_body_bytes: size(
                "max_body_bytes",
                args.max_body_bytes.or(file.max_body_bytes),
                defaults.max_body_bytes,
            )?,
            max_ids: args.max_ids.or(file.max_ids).unwrap_or(defaults.max_ids),
            max_concurrency: args
                .max_concurrency
                .or(file.max_concurrency)
                .unwrap_or(defaults.max_concurrency),
            rocks: RocksOptions {
                cache_bytes: size(
                    "cache_bytes",
                    args.cache_bytes.or(file.cache_bytes),
                    defaults.rocks.cache_bytes,
                )?,
                memtable_bytes: size(
                    "memtable_bytes",
                    args.memtable_bytes.or(file.memtable_bytes),
                    defaults.rocks.memtable_bytes,
                )?,
            },
            shutdown_grace: args
                .shutdown_grace
                .or(file.shutdown_grace)
                .map_or(defaults.shutdown_grace, |d| d.0),
            namespaces: file.namespaces,
            config_file,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every setting's range.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |setting: &'static str, reason: String| Err(Error::Config { setting, reason });
        if self.max_body_bytes == 0 {
            return bad("max_body_bytes", "must be at least 1 byte".into());
        }
        if self.max_ids == 0 {
            return bad("max_ids", "must be at least 1".into());
        }
        if self.max_concurrency == 0 {
            return bad("max_concurrency", "must be at least 1".into());
        }
        // Tokio's semaphores count up to usize::MAX >> 3 permits.
        if self.max_concurrency > MAX_CONCURRENCY {
            return bad(
                "max_concurrency",
                format!(
                    "{} is over the limit of {MAX_CONCURRENCY}",
                    self.max_concurrency
                ),
            );
        }
        if self.rocks.cache_bytes == 0 {
            return bad("cache_bytes", "must be at least 1 byte".into());
        }
        if self.rocks.memtable_bytes == 0 {
            return bad("memtable_bytes", "must be at least 1 byte".into());
        }
        for (i, token) in self.tokens.iter().enumerate() {
            // An empty token would let `Authorization: Bearer ` in; a token with
            // spaces or control characters could never be sent in a header.
            if token.is_empty() {
                return bad("tokens", format!("token {} is empty", i + 1));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return bad(
                    "tokens",
                    format!(
                        "token {} has characters other than visible ASCII, which cannot be \
                         sent in an Authorization header",
                        i + 1
                    ),
                );
            }
        }
        for name in self.namespaces.keys() {
            if let Err(e) = NamespaceName::new(name.as_str()) {
                return bad("namespaces", e.to_string());
            }
        }
        if self.durability != Durability::Memory && self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "must not be empty".into());
        }
        Ok(())
    }
}

/// The most `max_concurrency` may be.
pub const MAX_CONCURRENCY: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        for (s, n) in [
            ("4194304", 4 << 20),
            ("4MiB", 4 << 20),
            ("4M", 4 << 20),
            ("512KiB", 512 << 10),
            ("1GiB", 1 << 30),
            ("64MB", 64_000_000),
            ("1kB", 1_000),
            ("7B", 7),
            (" 2 MiB ", 2 << 20),
        ] {
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(n)), "{s}");
        }
        for bad in ["", "MiB", "4XB", "-1", "99999999999GiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
        assert_eq!(ByteSize(4 << 20).to_string(), "4MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn file_settings_and_precedence() {
        let file = FileConfig::parse(
            r#"
            listen = "0.0.0.0:9000"
            max_ids = 5
            max_body_bytes = "1MiB"
            shutdown_grace = "3s"
            tokens = ["from-file"]
            durability = "sync"

            [namespaces.orders]
            generations = 6
            generation_span = "10m"

            [namespaces.default]
            fp_rate = 0.001
            "#,
        )
        .unwrap();
        let args = ServeArgs {
            max_ids: Some(7),
            ..ServeArgs::default()
        };
        let s = Settings::merge(&args, file, None).unwrap();
        assert_eq!(s.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(s.max_ids, 7, "a flag wins over the file");
        assert_eq!(s.max_body_bytes, 1 << 20);
        assert_eq!(s.shutdown_grace, Duration::from_secs(3));
        assert_eq!(s.tokens, ["from-file"]);
        assert_eq!(s.durability, Durability::Sync);
        assert_eq!(s.namespaces["orders"].generations(), 6);
        assert_eq!(s.namespaces["default"].fp_rate(), 0.001);
        assert_eq!(s.max_concurrency, DEFAULT_MAX_CONCURRENCY);
    }

    #[test]
    fn defaults_without_a_file() {
        let s = Settings::merge(&ServeArgs::default(), FileConfig::default(), None).unwrap();
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn bad_files_name_the_key() {
        let err = FileConfig::parse("max_idz = 3").unwrap_err();
        assert!(err.contains("max_idz"), "{err}");
        let err = FileConfig::parse("[namespaces.orders]\nfp_rate = 2.0").unwrap_err();
        assert!(err.contains("fp_rate"), "{err}");
        let err = FileConfig::parse("durability = \"fast\"").unwrap_err();
        assert!(err.contains("durability") || err.contains("fast"), "{err}");
        let err = FileConfig::parse("max_body_bytes = \"4 parsecs\"").unwrap_err();
        assert!(err.contains("max_body_bytes"), "{err}");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let setting_of = |file: &str, args: ServeArgs| match Settings::merge(
            &args,
            FileConfig::parse(file).unwrap(),
            None,
        ) {
            Err(Error::Config { setting, .. }) => setting,
            other => panic!("expected a config error, got {other:?}"),
        };
        let none = ServeArgs::default;
        assert_eq!(setting_of("max_ids = 0", none()), "max_ids");
        assert_eq!(setting_of("max_concurrency = 0", none()), "max_concurrency");
        assert_eq!(setting_of("max_body_bytes = 0", none()), "max_body_bytes");
        assert_eq!(setting_of("cache_bytes = 0", none()), "cache_bytes");
        assert_eq!(setting_of("tokens = [\"\"]", none()), "tokens");
        assert_eq!(setting_of("tokens = [\"a b\"]", none()), "tokens");
        assert_eq!(
            setting_of("[namespaces.\"no/slash\"]", none()),
            "namespaces"
        );
    }
}
