//! Answers, written in RESP2 or RESP3 as the connection's `HELLO` chose.
//!
//! One [`Reply`] value serves both: a map is a flat array in RESP2, nil is `$-1`,
//! a boolean an integer, a double a bulk string, as Redis itself downgrades them.

use std::borrow::Cow;

use bytes::Bytes;

use crate::server::ApiError;

/// One answer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Reply {
    /// `+OK`.
    Simple(Cow<'static, str>),
    /// `-ERR ...`: the whole line after `-`, its first word the error's code.
    Error(Cow<'static, str>),
    /// `:1`.
    Int(i64),
    /// `$3\r\nabc`.
    Bulk(Bytes),
    /// RESP2 `$-1`, RESP3 `_`.
    Nil,
    /// `*N`.
    Array(Vec<Self>),
    /// RESP3 `%N`; RESP2 a flat array of keys and values.
    Map(Vec<(Self, Self)>),
    /// RESP3 `#t`/`#f`; RESP2 `:1`/`:0`.
    Bool(bool),
    /// RESP3 `,`; RESP2 a bulk string.
    Double(f64),
}

impl Reply {
    /// `+OK`.
    pub(crate) const OK: Self = Self::Simple(Cow::Borrowed("OK"));

    /// An error line; `\r` and `\n` in it become blanks (they would end the line).
    pub(crate) fn error(text: impl Into<Cow<'static, str>>) -> Self {
        let text = text.into();
        if text.contains(['\r', '\n']) {
            return Self::Error(Cow::Owned(text.replace(['\r', '\n'], " ")));
        }
        Self::Error(text)
    }

    /// A bulk string of text.
    pub(crate) fn text(text: impl Into<String>) -> Self {
        Self::Bulk(Bytes::from(text.into()))
    }

    /// A bulk string of static text.
    pub(crate) const fn word(text: &'static str) -> Self {
        Self::Bulk(Bytes::from_static(text.as_bytes()))
    }

    /// A map with text keys.
    pub(crate) fn map(fields: Vec<(&'static str, Self)>) -> Self {
        Self::Map(
            fields
                .into_iter()
                .map(|(k, v)| (Self::word(k), v))
                .collect(),
        )
    }

    /// Whether this is an error answer.
    pub(crate) const fn is_error(&self) -> bool {
        matches!(self, Self::Error(_))
    }

    /// Writes the answer to `out`.
    pub(crate) fn encode(&self, resp3: bool, out: &mut Vec<u8>) {
        match self {
            Self::Simple(s) => line(out, b'+', s.as_bytes()),
            Self::Error(s) => line(out, b'-', s.as_bytes()),
            Self::Int(n) => header(out, b':', *n),
            Self::Bulk(b) => bulk(out, b),
            Self::Nil if resp3 => out.extend_from_slice(b"_\r\n"),
            Self::Nil => out.extend_from_slice(b"$-1\r\n"),
            Self::Array(items) => {
                header(out, b'*', len(items.len()));
                for item in items {
                    item.encode(resp3, out);
                }
            }
            Self::Map(pairs) => {
                if resp3 {
                    header(out, b'%', len(pairs.len()));
                } else {
                    header(out, b'*', len(pairs.len() * 2));
                }
                for (k, v) in pairs {
                    k.encode(resp3, out);
                    v.encode(resp3, out);
                }
            }
            Self::Bool(b) if resp3 => out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Self::Bool(b) => out.extend_from_slice(if *b { b":1\r\n" } else { b":0\r\n" }),
            Self::Double(d) => {
                let text = if d.is_finite() {
                    format!("{d}")
                } else if d.is_nan() {
                    "nan".to_owned()
                } else if *d > 0.0 {
                    "inf".to_owned()
                } else {
                    "-inf".to_owned()
                };
                if resp3 {
                    line(out, b',', text.as_bytes());
                } else {
                    bulk(out, text.as_bytes());
                }
            }
        }
    }
}

fn len(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `<kind><n>\r\n`, the number written in place: every answer has at least one,
/// so none allocates a string for it.
fn header(out: &mut Vec<u8>, kind: u8, n: i64) {
    use std::io::Write;
    out.push(kind);
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{n}");
    out.extend_from_slice(b"\r\n");
}

fn line(out: &mut Vec<u8>, kind: u8, text: &[u8]) {
    out.push(kind);
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, data: &[u8]) {
    header(out, b'$', len(data.len()));
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

impl From<ApiError> for Reply {
    /// The daemon's errors as RESP errors: bad input as `ERR`, the rest under their
    /// code in capitals (`OVERLOADED`, `UNKNOWN_NAMESPACE`, `STORAGE_UNAVAILABLE`,
    /// `CONFLICT`, ...), as Redis modules name theirs, so a client can tell a retry
    /// worth making from a mistake.
    fn from(e: ApiError) -> Self {
        if e.status() == axum::http::StatusCode::BAD_REQUEST {
            return Self::error(format!("ERR {}", e.message()));
        }
        Self::error(format!(
            "{} {}",
            e.code().as_str().to_ascii_uppercase(),
            e.message()
        ))
    }
}

impl From<oncely::Error> for Reply {
    fn from(e: oncely::Error) -> Self {
        ApiError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(r: &Reply) -> (String, String) {
        let mut two = Vec::new();
        let mut three = Vec::new();
        r.encode(false, &mut two);
        r.encode(true, &mut three);
        (
            String::from_utf8(two).unwrap(),
            String::from_utf8(three).unwrap(),
        )
    }

    #[test]
    fn resp2_and_resp3() {
        assert_eq!(both(&Reply::OK).0, "+OK\r\n");
        assert_eq!(both(&Reply::Nil), ("$-1\r\n".into(), "_\r\n".into()));
        assert_eq!(both(&Reply::Bool(true)), (":1\r\n".into(), "#t\r\n".into()));
        assert_eq!(
            both(&Reply::map(vec![("a", Reply::Int(1))])),
            (
                "*2\r\n$1\r\na\r\n:1\r\n".into(),
                "%1\r\n$1\r\na\r\n:1\r\n".into()
            )
        );
        assert_eq!(
            both(&Reply::Double(0.5)),
            ("$3\r\n0.5\r\n".into(), ",0.5\r\n".into())
        );
        assert_eq!(
            both(&Reply::error("ERR a\r\nb")).0,
            "-ERR a  b\r\n",
            "no line break can escape an error"
        );
    }
}
