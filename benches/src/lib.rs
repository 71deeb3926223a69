//! Shared helpers for Oncely's criterion benchmarks.
//!
//! Every benchmark draws its event IDs from a seeded RNG before any clock starts, so
//! runs are reproducible and ID generation never shows up in a measurement. The
//! timing helper [`time_over_pool`] walks a pre-generated pool of IDs across criterion
//! iterations and lets the caller reset its subject, outside the timed span, whenever
//! the pool is used up: that is how a check-and-mark benchmark keeps inserting IDs its
//! filter has never seen without the filter filling past its sized capacity.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// An event ID as the benchmarks use it: 16 random bytes, the size of a UUID.
pub type Id = [u8; 16];

/// `n` IDs drawn from a seeded RNG. Different seeds give disjoint sets in practice: two
/// random 128-bit values collide with probability 2^-128.
#[must_use]
pub fn random_ids(n: usize, seed: u64) -> Vec<Id> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ids = vec![[0_u8; 16]; n];
    for id in &mut ids {
        rng.fill_bytes(id);
    }
    ids
}

/// `members` and `strangers` interleaved in a seeded random order, for probes that
/// must not let the branch predictor learn whether the next answer is a hit.
#[must_use]
pub fn shuffled_mix(members: &[Id], strangers: &[Id], seed: u64) -> Vec<Id> {
    use rand::seq::SliceRandom;
    let mut mix: Vec<Id> = members.iter().chain(strangers).copied().collect();
    mix.shuffle(&mut StdRng::seed_from_u64(seed));
    mix
}

/// A subject under test and how far into the ID pool its benchmark has got. It lives
/// across criterion's calls to `iter_custom`, so successive samples keep consuming
/// fresh IDs instead of replaying the start of the pool.
#[derive(Debug)]
pub struct PoolCursor<S> {
    /// The filter (or anything else) being measured.
    pub subject: S,
    next: usize,
}

impl<S> PoolCursor<S> {
    /// A cursor at the start of the pool. The subject is taken to be in the state it
    /// must be in when the pool starts (empty, for check-and-mark).
    pub const fn new(subject: S) -> Self {
        Self { subject, next: 0 }
    }
}

/// Runs `rounds` rounds of `per_round` IDs each through `run`, taking IDs from `pool`
/// in order from where the cursor stands, and returns the time spent inside `run`
/// only.
///
/// When the pool is used up, `reset` brings the subject back to its starting state
/// with the clock stopped, and the pool starts over. `run` always receives a whole
/// number of rounds, so the pool's length must be a multiple of `per_round`.
///
/// # Panics
///
/// If the pool is empty or its length is not a multiple of `per_round`.
pub fn time_over_pool<S>(
    rounds: u64,
    per_round: usize,
    pool: &[Id],
    cursor: &mut PoolCursor<S>,
    mut reset: impl FnMut(&mut S),
    mut run: impl FnMut(&mut S, &[Id]),
) -> Duration {
    assert!(
        per_round > 0 && !pool.is_empty() && pool.len().is_multiple_of(per_round),
        "a pool of {} IDs cannot be cut into rounds of {per_round}",
        pool.len()
    );
    let mut left = usize::try_from(rounds)
        .ok()
        .and_then(|r| r.checked_mul(per_round))
        .expect("criterion asked for more IDs than fit in memory addresses");
    let mut spent = Duration::ZERO;
    while left > 0 {
        if cursor.next == pool.len() {
            reset(&mut cursor.subject);
            cursor.next = 0;
        }
        let n = left.min(pool.len() - cursor.next);
        let ids = &pool[cursor.next..cursor.next + n];
        let start = Instant::now();
        run(&mut cursor.subject, ids);
        spent += start.elapsed();
        cursor.next += n;
        left -= n;
    }
    spent
}

/// Sizes read from the environment variable `name`, comma-separated (underscores
/// allowed, as in `100_000_000`), or `defaults` when it is unset. Lets a quick run
/// pick other sizes without editing the benchmark.
///
/// # Panics
///
/// If the variable is set but is not a list of positive integers.
#[must_use]
pub fn env_sizes(name: &str, defaults: &[usize]) -> Vec<usize> {
    let Ok(v) = std::env::var(name) else {
        return defaults.to_vec();
    };
    v.split(',')
        .map(|n| {
            n.trim()
                .replace('_', "")
                .parse()
                .ok()
                .filter(|&n: &usize| n > 0)
                .unwrap_or_else(|| panic!("{name}={v:?}: {n:?} is not a positive integer"))
        })
        .collect()
}

/// `n` as a short human label: `1M`, `100M`, `250k`.
#[must_use]
pub fn count_label(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// What the ceiling servers (`ceiling`, `resp_ceiling`) share: the daemon's
/// runtime with `worker_threads` as `oncelyd serve --worker-threads` takes it, a
/// listener on `listen` announced as `listening on ADDR` on standard output once
/// bound, and `serve` run on it until it fails; errors on standard error under
/// `name`.
pub fn serve_ceiling<F, Fut>(
    name: &str,
    listen: std::net::SocketAddr,
    worker_threads: Option<usize>,
    serve: F,
) -> std::process::ExitCode
where
    F: FnOnce(tokio::net::TcpListener) -> Fut,
    Fut: Future<Output = std::io::Result<()>>,
{
    use std::io::Write;
    let settings = oncelyd::config::Settings {
        worker_threads,
        ..Default::default()
    };
    let runtime = match settings
        .validate()
        .and_then(|()| oncelyd::server::runtime(&settings))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let served: std::io::Result<()> = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", listener.local_addr()?)?;
        out.flush()?;
        drop(out);
        serve(listener).await
    });
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_cycles_and_resets_outside_the_count() {
        let pool = random_ids(6, 1);
        let mut cursor = PoolCursor::new(Vec::<Id>::new());
        let mut resets = 0;
        for _ in 0..4 {
            let _ = time_over_pool(
                2,
                2,
                &pool,
                &mut cursor,
                |seen| {
                    resets += 1;
                    seen.clear();
                },
                Vec::extend_from_slice,
            );
        }
        // 16 IDs through a pool of 6: two full passes, then 4 more.
        assert_eq!(resets, 2);
        assert_eq!(cursor.subject, pool[..4]);
    }

    #[test]
    fn seeded_ids_are_reproducible_and_distinct() {
        assert_eq!(random_ids(10, 3), random_ids(10, 3));
        assert_ne!(random_ids(10, 3), random_ids(10, 4));
        assert_eq!(count_label(100_000_000), "100M");
        assert_eq!(count_label(250_000), "250k");
    }
}
