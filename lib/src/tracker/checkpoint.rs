//! Checkpoints: a consumer's last processed position per namespace, and the rules
//! every engine applies to them, written once here.
//!
//! A write may carry a precondition, the position its caller last read (or none):
//! two instances of one consumer can then never move a checkpoint over each other.
//! [`precondition`] decides such a write from what is stored; each engine only
//! reads the stored position and writes the new one atomically around it (the
//! embedded engine under a lock, PostgreSQL under the row's lock).

use crate::error::Error;

/// The longest checkpoint position, in bytes.
pub const MAX_POSITION_LEN: usize = 1024;

/// What a write with a precondition does, given what is stored.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    /// The stored position is the expected one: store the new position.
    Store,
    /// The new position is stored already (a retry whose first attempt landed):
    /// nothing to write, and the call succeeds.
    AlreadyThere,
}

/// Decides a write of `position` that expects `expected` (`None`: that no position
/// is stored yet) over the `stored` one.
///
/// The new position already stored answers success, whatever was expected: the
/// first attempt of a retried call may have landed, and its answer been lost.
///
/// # Errors
///
/// [`Error::CheckpointConflict`] with the stored position when it is neither the
/// expected one nor the new one.
pub(crate) fn precondition(
    consumer: &str,
    stored: Option<&str>,
    expected: Option<&str>,
    position: &str,
) -> Result<Write, Error> {
    if stored == Some(position) {
        Ok(Write::AlreadyThere)
    } else if stored == expected {
        Ok(Write::Store)
    } else {
        Err(Error::CheckpointConflict {
            consumer: consumer.to_owned(),
            expected: expected.map(str::to_owned),
            current: stored.map(str::to_owned),
        })
    }
}

/// Validates a consumer's name: the namespace naming rules.
pub(crate) fn validate_consumer(consumer: &str) -> Result<(), Error> {
    crate::id::NamespaceName::new(consumer)
        .map(drop)
        .map_err(|e| match e {
            Error::InvalidNamespace { reason, .. } => Error::InvalidArgument {
                field: "consumer",
                reason: format!("{consumer:?}: {reason}"),
            },
            other => other,
        })
}

/// Validates a checkpoint write: the consumer's name and the position.
pub(crate) fn validate_checkpoint(consumer: &str, position: &str) -> Result<(), Error> {
    validate_consumer(consumer)?;
    validate_position("position", position)
}

/// Validates a checkpoint write with a precondition: as [`validate_checkpoint`],
/// and the expected position by the same rules (a position that could never be
/// stored could never match).
pub(crate) fn validate_conditional(
    consumer: &str,
    expected: Option<&str>,
    position: &str,
) -> Result<(), Error> {
    validate_checkpoint(consumer, position)?;
    expected.map_or(Ok(()), |e| validate_position("expected", e))
}

fn validate_position(field: &'static str, position: &str) -> Result<(), Error> {
    if position.is_empty() || position.len() > MAX_POSITION_LEN {
        return Err(Error::InvalidArgument {
            field,
            reason: format!("{} bytes is outside 1..={MAX_POSITION_LEN}", position.len()),
        });
    }
    // PostgreSQL's `text` cannot hold U+0000: refused on every store alike, so that
    // a position means the same wherever it is kept (and a caller's bad input is
    // never taken for a failing store).
    if let Some(at) = position.find('\0') {
        return Err(Error::InvalidArgument {
            field,
            reason: format!("contains U+0000 (NUL) at byte {at}, which positions may not hold"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every combination of stored, expected and new that matters: the rule as a
    /// table.
    #[test]
    fn a_precondition_decides_by_the_stored_position() {
        use Write::{AlreadyThere, Store};
        /// Stored, expected, new: the decision, or the conflict's stored position.
        type Case = (
            Option<&'static str>,
            Option<&'static str>,
            &'static str,
            Result<Write, Option<&'static str>>,
        );
        let cases: [Case; 9] = [
            // Nothing stored yet.
            (None, None, "5", Ok(Store)),
            (None, Some("4"), "5", Err(None)),
            // The expected position is stored.
            (Some("4"), Some("4"), "5", Ok(Store)),
            // Another writer moved it on.
            (Some("6"), Some("4"), "5", Err(Some("6"))),
            (Some("6"), None, "5", Err(Some("6"))),
            // The new position is stored already: a retry whose first attempt
            // landed, or another writer that got to the same place.
            (Some("5"), Some("4"), "5", Ok(AlreadyThere)),
            (Some("5"), None, "5", Ok(AlreadyThere)),
            (Some("5"), Some("5"), "5", Ok(AlreadyThere)),
            // Expecting what is stored to be written again changes nothing.
            (Some("4"), Some("5"), "5", Err(Some("4"))),
        ];
        for (stored, expected, position, want) in cases {
            let got = precondition("c", stored, expected, position).map_err(|e| match e {
                Error::CheckpointConflict {
                    consumer,
                    expected: e,
                    current,
                } => {
                    assert_eq!(consumer, "c");
                    assert_eq!(e.as_deref(), expected);
                    current
                }
                other => panic!("{other}"),
            });
            assert_eq!(
                got.as_ref().map_err(Option::as_deref),
                want.as_ref().map_err(|c| *c),
                "stored {stored:?}, expected {expected:?}, new {position:?}"
            );
        }
    }

    #[test]
    fn an_expected_position_is_validated_as_a_position() {
        assert!(validate_conditional("c", None, "5").is_ok());
        assert!(validate_conditional("c", Some("4"), "5").is_ok());
        for bad in ["", "a\0b"] {
            let e = validate_conditional("c", Some(bad), "5").unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidArgument {
                        field: "expected",
                        ..
                    }
                ),
                "{e}"
            );
        }
        let long = "x".repeat(MAX_POSITION_LEN + 1);
        let e = validate_conditional("c", Some(&long), "5").unwrap_err();
        assert!(e.to_string().contains("1025 bytes"), "{e}");
        let e = validate_conditional("c", Some("4"), "").unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidArgument {
                    field: "position",
                    ..
                }
            ),
            "{e}"
        );
        let e = validate_conditional("bad name", None, "5").unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidArgument {
                    field: "consumer",
                    ..
                }
            ),
            "{e}"
        );
    }
}
