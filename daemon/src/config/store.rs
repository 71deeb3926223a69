//! The `store` setting: where the tracker's state lives when it is not the embedded
//! RocksDB.
//!
//! Today that is PostgreSQL, given as a libpq-style URL (`postgres://` or
//! `postgresql://`), with several hosts and `target_session_attrs=read-write` for
//! failover. The URL may carry a password, so it is never shown whole: [`StoreUrl`]'s
//! `Display` and `Debug` print it with the password masked, and only
//! [`StoreUrl::expose`] hands the real text to the library.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// A PostgreSQL URL, checked when parsed (the same parser the store connects with).
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    url: String,
}

/// What a URL must start with.
const SCHEMES: [&str; 2] = ["postgres://", "postgresql://"];

impl StoreUrl {
    /// The URL as given, password included: for opening the store, never for logs.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// The URL with any password replaced by `***` (in the user part, and in a
    /// `password=` parameter).
    #[must_use]
    pub fn redacted(&self) -> String {
        let url = &self.url;
        let scheme_end = url.find("://").map_or(0, |i| i + 3);
        let (head, rest) = url.split_at(scheme_end);
        // The authority ends at the first `/` or `?` after the scheme; its user part
        // ends at the last `@` in it (a password may contain `@` only when escaped,
        // but a careless one must not leak either).
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let authority = match authority.rfind('@') {
            Some(at) => {
                let (user_info, hosts) = authority.split_at(at);
                match user_info.find(':') {
                    Some(colon) => format!("{}:***{hosts}", &user_info[..colon]),
                    None => authority.to_owned(),
                }
            }
            None => authority.to_owned(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let params: Vec<String> = query
                    .split('&')
                    .map(|p| match p.split_once('=') {
                        Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                        _ => p.to_owned(),
                    })
                    .collect();
                format!("{path}?{}", params.join("&"))
            }
            None => tail.to_owned(),
        };
        format!("{head}{authority}{tail}")
    }
}

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let url = s.trim();
        if !SCHEMES.iter().any(|scheme| url.starts_with(scheme)) {
            // The value may be a password pasted in the wrong place: never echo it.
            return Err(
                "not a PostgreSQL URL: it must start with postgres:// or postgresql:// \
                 (postgres://user@host:5432/db); leave store unset for the embedded RocksDB"
                    .into(),
            );
        }
        let parsed = Self {
            url: url.to_owned(),
        };
        if let Err(e) = tokio_postgres::Config::from_str(url) {
            return Err(format!(
                "{} is not a valid PostgreSQL URL: {e}",
                parsed.redacted()
            ));
        }
        Ok(parsed)
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({:?})", self.redacted())
    }
}

impl<'de> Deserialize<'de> for StoreUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> StoreUrl {
        s.parse().unwrap()
    }

    #[test]
    fn passwords_never_show() {
        for (given, shown) in [
            (
                "postgres://oncely:s3cret@db1:5432/app",
                "postgres://oncely:***@db1:5432/app",
            ),
            (
                "postgresql://oncely:p%40ss@db1:5432,db2:5432/app?target_session_attrs=read-write",
                "postgresql://oncely:***@db1:5432,db2:5432/app?target_session_attrs=read-write",
            ),
            (
                "postgres://oncely@db1/app?password=s3cret&connect_timeout=2",
                "postgres://oncely@db1/app?password=***&connect_timeout=2",
            ),
            ("postgres://db1/app", "postgres://db1/app"),
            ("postgres://oncely@db1", "postgres://oncely@db1"),
        ] {
            let u = url(given);
            assert_eq!(u.to_string(), shown);
            assert!(!format!("{u:?}").contains("s3cret"), "{u:?}");
            assert_eq!(u.expose(), given);
        }
    }

    #[test]
    fn only_postgres_urls_are_taken() {
        for bad in [
            "",
            "./data",
            "mysql://db/app",
            "s3cret",
            "host=db1 dbname=app",
        ] {
            let e = bad.parse::<StoreUrl>().unwrap_err();
            assert!(e.contains("postgres://"), "{bad}: {e}");
            assert!(bad.is_empty() || !e.contains(bad), "{bad} echoed: {e}");
        }
        let e = "postgres://oncely:s3cret@db1:notaport/app"
            .parse::<StoreUrl>()
            .unwrap_err();
        assert!(e.contains("not a valid PostgreSQL URL"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }
}
