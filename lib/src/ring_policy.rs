//! The rules of a namespace's ring, written once for every engine, as `decide`
//! is for IDs: when the open generation seals, which generations keep their exact
//! tables (the floor), and when a sealed generation's filter must be rebuilt from
//! its table before that table may go.
//!
//! Pure functions over numbers, table-tested below. Each engine gathers their
//! inputs from its own state (the embedded engine from memory, PostgreSQL from its
//! ring row and generations table) and applies what they decide.
//!
//! **Sealing.** A generation seals at the capacity in force, and never past what
//! its filter holds within the rate each generation must meet ([`seal_limit`]).
//! The engines differ only in whether the open generation has a filter: the
//! embedded engine fills one as marks land, so a filter sized under an earlier,
//! looser configuration can seal it early; PostgreSQL builds the filter at sealing,
//! sized for what the table holds, so the open generation seals at the capacity.

use crate::sizing::{FilterSizing, Layout};

/// The IDs after which the open generation seals: `capacity`, and, where the open
/// generation already has a filter (`open_filter`), never more than that filter
/// holds within `generation_fp`.
pub(crate) fn seal_limit(
    capacity: u64,
    open_filter: Option<&FilterSizing>,
    generation_fp: f64,
) -> u64 {
    open_filter.map_or(capacity, |f| capacity.min(f.capacity_at(generation_fp)))
}

/// Whether a sealed generation's filter, holding `ids`, answers false positives
/// above the rate each generation must now meet (`generation_fp`): it holds more
/// IDs than it was sized for (a store from before filters were sized per
/// generation), was filled for a looser rate (before the target was lowered or
/// `generations` raised), or lays its bits out the first standard way, which
/// misses low rates ([`Layout::StandardV1`]). Such a filter is rebuilt from its
/// exact table before the table goes.
pub(crate) fn filter_too_loose(sizing: &FilterSizing, ids: u64, generation_fp: f64) -> bool {
    ids > sizing.capacity
        || sizing.layout == Layout::StandardV1
        || (sizing.fp_rate > generation_fp && sizing.fp_after(ids) > generation_fp)
}

/// The floor the configuration asks for: only the newest `exact_generations` keep
/// tables, a table never comes back (the floor never moves down), and nothing
/// below the oldest live generation has one.
pub(crate) fn wanted_floor(floor: u64, newest: u64, oldest: u64, exact_generations: u32) -> u64 {
    let horizon = newest.saturating_sub(u64::from(exact_generations).saturating_sub(1));
    floor.max(horizon).max(oldest)
}

/// The highest floor up to `wanted` that every generation it passes is `ready`
/// for (sealed, its writes settled, its filter stored and tight enough: each
/// engine knows what its own generations need); never below the oldest live
/// generation.
pub(crate) fn ready_floor(
    floor: u64,
    oldest: u64,
    wanted: u64,
    mut ready: impl FnMut(u64) -> bool,
) -> u64 {
    let mut floor = floor.max(oldest);
    while floor < wanted && ready(floor) {
        floor += 1;
    }
    floor
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizing::{size_filter, size_filter_with_layout};

    #[test]
    fn sealing() {
        let sized = size_filter(1_000, 1e-3).unwrap();
        // No open filter (PostgreSQL): the capacity.
        assert_eq!(seal_limit(5_000, None, 1e-6), 5_000);
        // A filter sized for the rate: the smaller of the two.
        assert_eq!(seal_limit(5_000, Some(&sized), 1e-3), 1_000);
        assert_eq!(seal_limit(500, Some(&sized), 1e-3), 500);
        // A stricter rate since: fewer than the filter was sized for.
        let stricter = seal_limit(5_000, Some(&sized), 1e-4);
        assert!(stricter < 1_000 && stricter > 0, "{stricter}");
        assert!(sized.fp_after(stricter) <= 1e-4);
        assert!(sized.fp_after(stricter + 1) > 1e-4);
    }

    #[test]
    fn loose_filters() {
        let sized = size_filter(1_000, 1e-3).unwrap();
        assert!(!filter_too_loose(&sized, 1_000, 1e-3), "as sized");
        assert!(!filter_too_loose(&sized, 1_000, 1e-2), "a looser target");
        assert!(filter_too_loose(&sized, 1_001, 1e-3), "over its capacity");
        assert!(filter_too_loose(&sized, 1_000, 1e-4), "a stricter target");
        assert!(
            !filter_too_loose(&sized, 10, 1e-4),
            "a stricter target the few IDs it holds still meet"
        );
        let v1 = size_filter_with_layout(1_000, 1e-3, Layout::StandardV1).unwrap();
        assert!(filter_too_loose(&v1, 10, 1e-3), "the first standard layout");
    }

    #[test]
    fn floors() {
        // (floor, newest, oldest, exact) -> wanted
        for (floor, newest, oldest, exact, wanted) in [
            (1, 1, 1, 1, 1),
            (1, 5, 1, 2, 4),
            (1, 5, 3, 5, 3),
            (4, 5, 1, 5, 4),
            (1, 5, 1, 1, 5),
            (1, 2, 1, 8, 1),
        ] {
            assert_eq!(
                wanted_floor(floor, newest, oldest, exact),
                wanted,
                "{floor} {newest} {oldest} {exact}"
            );
        }
        // The floor moves past ready generations only, and never below the oldest.
        assert_eq!(ready_floor(1, 1, 4, |_| true), 4);
        assert_eq!(ready_floor(1, 1, 4, |g| g != 2), 2);
        assert_eq!(ready_floor(1, 3, 5, |_| false), 3);
        assert_eq!(ready_floor(4, 1, 4, |_| true), 4, "already there");
        let mut asked = Vec::new();
        let _ = ready_floor(2, 1, 5, |g| {
            asked.push(g);
            g < 3
        });
        assert_eq!(asked, [2, 3], "oldest first, up to the first not ready");
    }
}
