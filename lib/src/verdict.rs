//! What check-and-mark answers.

use crate::clock::Timestamp;

/// The answer for one event ID.
///
/// | verdict | meaning | what to do |
/// |---|---|---|
/// | [`New`](Self::New) | not seen in the remembered window; now marked | process it |
/// | [`Replayed`](Self::Replayed) | the same owner marked it before: your earlier `New`, returned again | process it if your earlier attempt did not finish |
/// | [`Duplicate`](Self::Duplicate) | an exact table holds it | skip it |
/// | [`ProbableDuplicate`](Self::ProbableDuplicate) | only a Bloom-only generation says seen: a duplicate with probability at least `1 - fp_rate` | skip it, or check your own records |
/// | [`InProgress`](Self::InProgress) | another owner holds a live claim on it | skip it for now; it may be redelivered |
#[must_use = "a verdict says whether to process the event"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Not seen in the remembered window; it is now marked.
    New,
    /// Marked earlier by the same owner: the original `New`, returned again.
    Replayed,
    /// An exact table holds it.
    Duplicate,
    /// Only a Bloom-only generation says it was seen.
    ProbableDuplicate,
    /// Another owner's claim on it is live until `until`.
    InProgress {
        /// When the claim's lease ends.
        until: Timestamp,
    },
}

impl Verdict {
    /// Whether the caller should process the event: `New` or `Replayed`.
    #[must_use]
    pub const fn is_new(self) -> bool {
        matches!(self, Self::New | Self::Replayed)
    }

    /// Whether this is a replayed `New`.
    #[must_use]
    pub const fn is_replayed(self) -> bool {
        matches!(self, Self::Replayed)
    }

    /// The name used over HTTP: `new` (replayed or not), `duplicate`,
    /// `probable_duplicate` or `in_progress`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::New | Self::Replayed => "new",
            Self::Duplicate => "duplicate",
            Self::ProbableDuplicate => "probable_duplicate",
            Self::InProgress { .. } => "in_progress",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_predicates() {
        assert!(Verdict::New.is_new() && Verdict::Replayed.is_new());
        assert!(!Verdict::Duplicate.is_new() && !Verdict::ProbableDuplicate.is_new());
        assert_eq!(Verdict::Replayed.as_str(), "new");
        assert!(Verdict::Replayed.is_replayed() && !Verdict::New.is_replayed());
        let v = Verdict::InProgress {
            until: Timestamp::from_millis(5),
        };
        assert_eq!(v.as_str(), "in_progress");
        assert!(!v.is_new());
    }
}
