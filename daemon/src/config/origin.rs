//! `allowed_origins`: the web origins whose pages may call the daemon.

use std::fmt;
use std::str::FromStr;

/// An origin allowed to send requests that carry an `Origin` header: `scheme://host`
/// or `scheme://host:port`, as browsers write it (RFC 6454, section 6.2).
///
/// Kept lowercase and without the scheme's default port (`https://a.example:443` is
/// `https://a.example`), which is how browsers serialise origins, so that comparing
/// with a request's header is a case-insensitive byte comparison.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AllowedOrigin(String);

impl AllowedOrigin {
    /// The origin as browsers write it.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether an `Origin` header's value names this origin.
    #[must_use]
    pub fn matches(&self, header: &[u8]) -> bool {
        header.eq_ignore_ascii_case(self.0.as_bytes())
    }
}

impl fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AllowedOrigin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let given = s.trim();
        if given == "*" {
            return Err("\"*\" would let every web page in; list the origins one by one".into());
        }
        if given.eq_ignore_ascii_case("null") {
            return Err(
                "\"null\" is the origin of sandboxed frames and local files; allowing it would \
                 let any of them in"
                    .into(),
            );
        }
        let lower = given.to_ascii_lowercase();
        // A trailing slash is a common way of writing a site; browsers never send one.
        let lower = lower.strip_suffix('/').unwrap_or(&lower);
        let (scheme, authority) = lower.split_once("://").ok_or_else(|| {
            format!("{given:?} is not an origin like https://app.example or http://127.0.0.1:8080")
        })?;
        let default_port = match scheme {
            "http" => "80",
            "https" => "443",
            _ => return Err(format!("{given:?}: the scheme must be http or https")),
        };
        if authority.is_empty()
            || authority
                .bytes()
                .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@') || !b.is_ascii_graphic())
        {
            return Err(format!(
                "{given:?}: an origin is a scheme and a host (and a port), with no path, query, \
                 user or spaces"
            ));
        }
        // The port follows the last colon after an IPv6 literal's closing bracket.
        let host_end = authority.rfind(']').map_or(0, |i| i + 1);
        let (host, port) = match authority[host_end..].rfind(':') {
            Some(i) => (
                &authority[..host_end + i],
                Some(&authority[host_end + i + 1..]),
            ),
            None => (authority, None),
        };
        if host.is_empty() {
            return Err(format!("{given:?}: the host is missing"));
        }
        let origin = match port {
            None => lower.to_owned(),
            Some(p) if p.parse::<u16>().is_ok_and(|n| n > 0) => {
                if p == default_port {
                    format!("{scheme}://{host}")
                } else {
                    lower.to_owned()
                }
            }
            Some(p) => return Err(format!("{given:?}: {p:?} is not a port from 1 to 65535")),
        };
        Ok(Self(origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised_as_browsers_write_them() {
        for (given, want) in [
            ("https://app.example", "https://app.example"),
            ("HTTPS://App.Example/", "https://app.example"),
            ("https://app.example:443", "https://app.example"),
            ("http://app.example:80", "http://app.example"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://[::1]:3000", "http://[::1]:3000"),
            ("http://[::1]", "http://[::1]"),
        ] {
            let o: AllowedOrigin = given.parse().unwrap();
            assert_eq!(o.as_str(), want, "{given}");
        }
        let o: AllowedOrigin = "https://app.example".parse().unwrap();
        assert!(o.matches(b"https://App.Example"));
        assert!(!o.matches(b"https://app.example.evil"));
        assert!(!o.matches(b"http://app.example"));
    }

    #[test]
    fn bad_origins_say_why() {
        for (bad, needle) in [
            ("*", "every web page"),
            ("null", "sandboxed"),
            ("app.example", "not an origin"),
            ("ftp://app.example", "http or https"),
            ("https://app.example/path", "no path"),
            ("https://user@app.example", "no path"),
            ("https://app.example:0", "not a port"),
            ("https://app.example:99999", "not a port"),
            ("https://", "not an origin"),
            ("https://:8080", "host is missing"),
        ] {
            let err = bad.parse::<AllowedOrigin>().unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
