//! Measured false-positive rates against theory.
//!
//! For each (capacity, fp) point, a filter sized by `size_filter` takes `capacity`
//! distinct IDs and is probed with IDs it never saw. The bound: the measured rate is
//! within 4 binomial standard deviations plus 5% of the theoretical rate. The 5% covers
//! what the closed form leaves out (positions drawn with replacement, hash quality);
//! 4 sigma keeps the test deterministic in spirit as well as in fact (the seeds are
//! fixed). The measured rate must also meet the requested rate.

use oncely::sizing::{self, Layout, size_filter_with_layout};
use oncely::{BloomFilter, HashSeed};

fn measure(capacity: u64, fp: f64, layout: Layout, probes: u64) -> (f64, f64, f64) {
    let sizing = size_filter_with_layout(capacity, fp, layout).unwrap();
    let mut f = BloomFilter::new(sizing, HashSeed::from_u64(0x5eed ^ capacity)).unwrap();
    for i in 0..capacity {
        let _ = f.insert(&i.to_le_bytes());
    }
    let hits = (0..probes)
        .filter(|i| f.contains(&(u64::MAX - i).to_le_bytes()))
        .count() as f64;
    (
        hits / probes as f64,
        sizing.theoretical_fp(),
        sizing.bits_per_key(),
    )
}

#[test]
fn measured_rates_match_theory() {
    let points = [
        (100_000, 0.01, Layout::Blocked),
        (200_000, 0.0025, Layout::Blocked),
        (50_000, 0.1, Layout::Blocked),
        (100_000, 0.01, Layout::Standard),
        (100_000, 0.001, Layout::Standard),
    ];
    for (capacity, fp, layout) in points {
        let probes = 2_000_000;
        let (measured, theory, bpk) = measure(capacity, fp, layout, probes);
        let sigma = (theory * (1.0 - theory) / probes as f64).sqrt();
        let bound = 4.0 * sigma + 0.05 * theory;
        println!(
            "{layout:?} n={capacity} fp={fp}: {bpk:.2} bits/key, theory {theory:.5}, measured {measured:.5}"
        );
        assert!(
            (measured - theory).abs() <= bound,
            "{layout:?} n={capacity} fp={fp}: measured {measured} vs theory {theory} (bound {bound})"
        );
        assert!(
            measured <= fp,
            "{layout:?} n={capacity}: measured {measured} over target {fp}"
        );
        assert!(bpk <= sizing::bits_per_key_budget(fp), "{bpk} bits per key");
    }
}
