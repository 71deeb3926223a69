//! Bounds on what namespaces may take: filter memory and their number.
//!
//! Each generation's filter is allocated whole when the generation opens, for the
//! capacity it is sized for, so a namespace's configuration decides its memory long
//! before it is used: a few configuration calls asking for large capacities could
//! otherwise commit more memory than the machine has, and the out-of-memory killer
//! would take every consumer's authority with it. With a budget, a creation or
//! reconfiguration whose filters would not fit is refused with the numbers, and
//! nothing changes.
//!
//! A namespace is charged its *footprint*: the most filter memory it can hold at any
//! moment over the rest of its life under its configuration. After a change, the
//! generations already live keep their sizes until they leave the ring while new
//! ones take the new size, so the footprint is the peak of that transition (or of
//! the steady state, `generations` filters of the configured size), plus one more
//! filter: a rotation allocates the new generation before the oldest leaves.

use crate::config::NamespaceConfig;
use crate::error::Error;

/// The bounds a tracker enforces on namespaces. `None` is unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_filter_bytes: Option<u64>,
    pub(crate) max_namespaces: Option<u32>,
}

/// The filter memory budget and what namespaces are charged against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FilterBudget {
    /// The budget, in bytes; `None` when unbounded.
    pub budget: Option<u64>,
    /// Bytes charged to namespaces: the sum of their footprints.
    pub charged: u64,
    /// Bytes of filters allocated now.
    pub allocated: u64,
}

/// The most filter memory a namespace with `config` can hold over its life, given the
/// sizes of its live generations (oldest first). See the module docs.
pub(crate) fn footprint(config: &NamespaceConfig, live: &[u64]) -> u64 {
    let generations = config.generations() as usize;
    let per = config.filter_sizing().memory_bytes();
    // Only the newest `generations` survive the change.
    let live = &live[live.len().saturating_sub(generations)..];
    let newest_old = |keep: usize| -> u64 { live.iter().rev().take(keep).sum() };
    let peak = (0..=generations)
        .map(|fresh| {
            newest_old(generations - fresh).saturating_add(per.saturating_mul(fresh as u64))
        })
        .max()
        .unwrap_or(0);
    peak.saturating_add(per)
}

/// Refuses `asked` bytes when they do not fit beside `in_use` in the budget.
pub(crate) fn check(limits: Limits, asked: u64, in_use: u64) -> Result<(), Error> {
    match limits.max_filter_bytes {
        Some(budget) if asked.saturating_add(in_use) > budget => Err(Error::OverBudget {
            asked,
            in_use,
            budget,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(generations: u32, capacity: u64) -> NamespaceConfig {
        NamespaceConfig::builder()
            .generations(generations)
            .exact_generations(1)
            .generation_capacity(capacity)
            .build()
            .unwrap()
    }

    #[test]
    fn a_steady_ring_is_charged_its_generations_and_one_being_opened() {
        let c = config(4, 100_000);
        let per = c.filter_sizing().memory_bytes();
        assert_eq!(footprint(&c, &[]), 5 * per);
        assert_eq!(footprint(&c, &[per; 4]), 5 * per);
    }

    #[test]
    fn a_change_is_charged_its_transition() {
        let big = config(4, 1_000_000).filter_sizing().memory_bytes();
        // Shrinking: the big generations stay until they leave, so the peak is
        // now, plus the first small one being opened.
        let small = config(4, 1_000);
        let per = small.filter_sizing().memory_bytes();
        assert_eq!(footprint(&small, &[big; 4]), 4 * big + per);
        // Growing from small live generations: the new size for all of them.
        let grown = config(4, 1_000_000);
        assert_eq!(footprint(&grown, &[per; 4]), 5 * big);
        // Fewer generations: only the newest survive.
        let two = config(2, 1_000);
        let per_of_two = two.filter_sizing().memory_bytes();
        assert_eq!(
            footprint(&two, &[big, big, big, per]),
            big + per + per_of_two
        );
    }

    #[test]
    fn over_budget_names_the_numbers() {
        let limits = Limits {
            max_filter_bytes: Some(100),
            max_namespaces: None,
        };
        assert!(check(limits, 60, 40).is_ok());
        let err = check(limits, 61, 40).unwrap_err();
        assert!(
            matches!(
                err,
                Error::OverBudget {
                    asked: 61,
                    in_use: 40,
                    budget: 100
                }
            ),
            "{err}"
        );
        assert!(check(Limits::default(), u64::MAX, u64::MAX).is_ok());
    }
}
