//! Validated names: event IDs and namespace names.

use std::fmt;

use crate::error::{Error, IdError};

/// The longest event ID, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// The longest namespace name, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// An event ID: 1 to [`MAX_ID_LEN`] opaque bytes, borrowed from the caller.
///
/// Construction validates, so an `EventId` in hand is always acceptable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId<'a>(&'a [u8]);

impl<'a> EventId<'a> {
    /// Validates an ID.
    ///
    /// # Errors
    ///
    /// [`IdError::Empty`] or [`IdError::TooLong`].
    pub const fn new(bytes: &'a [u8]) -> Result<Self, IdError> {
        if bytes.is_empty() {
            Err(IdError::Empty)
        } else if bytes.len() > MAX_ID_LEN {
            Err(IdError::TooLong {
                len: bytes.len(),
                max: MAX_ID_LEN,
            })
        } else {
            Ok(Self(bytes))
        }
    }

    /// The ID's bytes.
    #[must_use]
    pub const fn as_bytes(self) -> &'a [u8] {
        self.0
    }

    /// Validates the ID of a single-ID call (its error names index 0).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`].
    pub(crate) fn one(id: &'a [u8]) -> Result<Self, Error> {
        Self::new(id).map_err(|reason| Error::InvalidId { index: 0, reason })
    }

    /// Validates a whole batch, so that one bad ID refuses the batch before anything
    /// in it is marked.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`] with the index of the first bad ID.
    pub fn batch<T: AsRef<[u8]>>(ids: &'a [T]) -> Result<Vec<Self>, Error> {
        ids.iter()
            .enumerate()
            .map(|(index, id)| {
                Self::new(id.as_ref()).map_err(|reason| Error::InvalidId { index, reason })
            })
            .collect()
    }
}

impl<'a> TryFrom<&'a [u8]> for EventId<'a> {
    type Error = IdError;

    fn try_from(bytes: &'a [u8]) -> Result<Self, IdError> {
        Self::new(bytes)
    }
}

impl<'a> TryFrom<&'a str> for EventId<'a> {
    type Error = IdError;

    fn try_from(s: &'a str) -> Result<Self, IdError> {
        Self::new(s.as_bytes())
    }
}

impl fmt::Debug for EventId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(s) => write!(f, "EventId({s:?})"),
            Err(_) => write!(f, "EventId({:02x?})", self.0),
        }
    }
}

/// A namespace name: 1 to [`MAX_NAMESPACE_LEN`] of `A-Z a-z 0-9 . _ -`, other than
/// `.` and `..`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespaceName(String);

impl NamespaceName {
    /// The namespace every store has from its first open.
    pub const DEFAULT: &'static str = "default";

    /// Validates a name.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNamespace`] saying which rule it breaks.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > MAX_NAMESPACE_LEN {
            Some("longer than 64 bytes")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            Some("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed")
        } else if name == "." || name == ".." {
            // URL clients and proxies resolve these as path segments, so a namespace
            // (or consumer) of that name could never be addressed over HTTP.
            Some("\".\" and \"..\" are path segments, not names")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidNamespace { name, reason }),
            None => Ok(Self(name)),
        }
    }

    /// The `default` namespace's name.
    #[must_use]
    pub fn default_namespace() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NamespaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NamespaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl AsRef<str> for NamespaceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for NamespaceName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_bounds() {
        assert_eq!(EventId::new(b""), Err(IdError::Empty));
        assert!(EventId::new(&[0; 1]).is_ok());
        assert!(EventId::new(&[0xff; MAX_ID_LEN]).is_ok());
        assert_eq!(
            EventId::new(&[0; MAX_ID_LEN + 1]),
            Err(IdError::TooLong { len: 257, max: 256 })
        );
    }

    #[test]
    fn batch_names_the_first_bad_index() {
        let ids: [&[u8]; 4] = [b"a", b"b", b"", &[1; 300]];
        match EventId::batch(&ids) {
            Err(Error::InvalidId {
                index: 2,
                reason: IdError::Empty,
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(EventId::batch(&["x", "y"]).unwrap().len(), 2);
    }

    #[test]
    fn namespace_rules() {
        for ok in [
            "default",
            "a",
            "A.b_c-9",
            &"x".repeat(64),
            "...",
            ".a",
            "a..",
        ] {
            assert!(NamespaceName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "ü", "a/b", &"x".repeat(65), "tab\t", ".", ".."] {
            assert!(
                matches!(NamespaceName::new(bad), Err(Error::InvalidNamespace { .. })),
                "{bad:?}"
            );
        }
    }
}
