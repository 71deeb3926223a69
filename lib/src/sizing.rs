//! Sizing maths for Bloom filters: pure functions, no state.
//!
//! Everything here is deterministic arithmetic on `(capacity, fp)` or on bit counts, so
//! it can be shown by `oncelyd tune`, tested exhaustively and reused by every layer.
//!
//! Two layouts are sized:
//!
//! * [`Layout::Blocked`]: each ID touches one 512-bit block (one cache line). One memory
//!   access per operation, but keys spread unevenly over blocks, so it needs a few more
//!   bits than the standard layout for the same false-positive rate (about 3% more at
//!   1%, 6% at 0.25%, 14% at 0.01%).
//! * [`Layout::Standard`]: each of the `k` bits may land anywhere. Fewest bits, but `k`
//!   cache misses per operation once the filter outgrows the cache.
//!
//! [`size_filter`] picks the blocked layout whenever it fits the bits-per-key budget of
//! [`bits_per_key_budget`] (1.1 x 1.44 x log2(1/fp)), and the standard layout below
//! that (rates under about 2e-4), where cache-line blocking costs too many bits.

use crate::error::Error;

/// Bits in one block of the blocked layout: one 64-byte cache line.
pub const BLOCK_BITS: u64 = 512;

/// The most hash-derived bit positions per ID.
pub const MAX_HASHES: u32 = 48;

/// The largest filter one generation may allocate: 32 GiB.
pub const MAX_FILTER_BYTES: u64 = 32 << 30;

/// Sizing aims 3% under the requested rate so that the *measured* rate lands at or
/// under it: the closed forms below are approximations (about 1% for the blocked
/// layout), and a filter is one random draw. The cost is about 0.06 bits per key.
pub const SIZING_HEADROOM: f64 = 0.97;

/// How a filter maps an ID's bit positions onto memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// All of an ID's bits in one 512-bit, cache-line-aligned block.
    Blocked,
    /// An ID's bits anywhere in the filter, each position drawn from its own mix of
    /// the ID's hash.
    Standard,
    /// The standard layout as filters were first built: positions by enhanced double
    /// hashing, reduced to the filter's size by a multiply-shift. Only the top bits
    /// of each step survive that reduction, so small filters sized for low rates
    /// answered well above them (measured with `oncelyd tune --measure`: 2.0e-6 for
    /// 4,000 IDs sized for 1e-6, 2.5e-7 sized for 3e-11). Read from older snapshots,
    /// never chosen for a new filter; such a filter is rebuilt with [`Self::Standard`]
    /// before its generation turns Bloom-only.
    StandardV1,
}

impl Layout {
    /// The layout's name, as shown by `oncelyd tune`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Blocked => "blocked",
            Self::Standard => "standard",
            Self::StandardV1 => "standard_v1",
        }
    }

    pub(crate) const fn code(self) -> u8 {
        match self {
            Self::Blocked => 1,
            Self::StandardV1 => 2,
            Self::Standard => 3,
        }
    }

    pub(crate) const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Blocked),
            2 => Some(Self::StandardV1),
            3 => Some(Self::Standard),
            _ => None,
        }
    }
}

/// The size and shape of one Bloom filter.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FilterSizing {
    /// IDs the filter is sized for.
    pub capacity: u64,
    /// The false-positive rate requested at `capacity`.
    pub fp_rate: f64,
    /// How bits are laid out.
    pub layout: Layout,
    /// Total bits, always a whole number of 512-bit blocks.
    pub bits: u64,
    /// Bits set per ID.
    pub hashes: u32,
}

impl FilterSizing {
    /// Bits per ID at capacity.
    #[must_use]
    pub fn bits_per_key(&self) -> f64 {
        self.bits as f64 / self.capacity as f64
    }

    /// Bytes of memory for the bits.
    #[must_use]
    pub const fn memory_bytes(&self) -> u64 {
        self.bits / 8
    }

    /// Number of 512-bit blocks.
    #[must_use]
    pub const fn blocks(&self) -> u64 {
        self.bits / BLOCK_BITS
    }

    /// The expected false-positive rate once `capacity` IDs are in.
    #[must_use]
    pub fn theoretical_fp(&self) -> f64 {
        self.fp_after(self.capacity)
    }

    /// The expected false-positive rate after `n` distinct IDs.
    #[must_use]
    pub fn fp_after(&self, n: u64) -> f64 {
        layout_fp(self.layout, self.bits, self.hashes, n)
    }

    /// The most distinct IDs, up to `capacity`, that keep the filter at or under the
    /// rate `fp`: `capacity` itself when the filter was sized for `fp` or a stricter
    /// rate, fewer when the target is stricter than the filter's own.
    ///
    /// A filter cannot be resized, so a namespace whose target rate was lowered seals
    /// its open generation at this many IDs rather than let it exceed the new rate.
    #[must_use]
    pub fn capacity_at(&self, fp: f64) -> u64 {
        // Sized for this rate or a looser target: its capacity, exactly (no
        // floating-point evaluation that could shave an ID off).
        if fp >= self.fp_rate || self.fp_after(self.capacity) <= fp {
            return self.capacity;
        }
        // The rate grows with every ID: the largest n within `fp`, by bisection
        // (about 40 evaluations for the largest filters).
        let (mut ok, mut over) = (0_u64, self.capacity);
        while over - ok > 1 {
            let mid = ok + (over - ok) / 2;
            if self.fp_after(mid) <= fp {
                ok = mid;
            } else {
                over = mid;
            }
        }
        ok
    }
}

/// The bits-per-key budget for a target rate: 1.1 x 1.44 x log2(1/fp), that is 10% over
/// the information-theoretic optimum of a standard Bloom filter.
#[must_use]
pub fn bits_per_key_budget(fp: f64) -> f64 {
    1.1 * 1.44 * (1.0 / fp).log2()
}

/// The false-positive rate each of `generations` filters must meet so that a check
/// across all of them stays at or under `fp`: `1 - (1 - fp)^(1/generations)`, a little
/// above `fp / generations`.
#[must_use]
pub fn per_generation_fp(fp: f64, generations: u32) -> f64 {
    let g = f64::from(generations.max(1));
    // -expm1(ln1p(-fp) / g) is 1 - (1 - fp)^(1/g) without cancellation for tiny fp.
    -((-fp).ln_1p() / g).exp_m1()
}

/// Expected false-positive rate of a standard Bloom filter with `bits` bits and
/// `hashes` positions per ID after `n` IDs: `(1 - e^(-kn/m))^k`.
#[must_use]
pub fn standard_fp(bits: u64, hashes: u32, n: u64) -> f64 {
    if bits == 0 {
        return 1.0;
    }
    let k = f64::from(hashes);
    let fill = -(-k * n as f64 / bits as f64).exp_m1();
    fill.powf(k)
}

/// Expected false-positive rate of a blocked Bloom filter (512-bit blocks) with `bits`
/// bits and `hashes` positions per ID after `n` IDs.
///
/// The number of IDs in a block is Poisson with mean `n * 512 / bits`; a block holding
/// `i` IDs answers a probe positively with the probability `block_fp` gives for `ik`
/// positions set.
#[must_use]
pub fn blocked_fp(bits: u64, hashes: u32, n: u64) -> f64 {
    let blocks = bits / BLOCK_BITS;
    if blocks == 0 {
        return 1.0;
    }
    let lambda = n as f64 / blocks as f64;
    if lambda == 0.0 {
        return 0.0;
    }
    let k = f64::from(hashes);
    let miss_one = (1.0 - 1.0 / BLOCK_BITS as f64).ln();
    if lambda > 1e6 {
        // Loads this far past any sane sizing: the spread between blocks no longer
        // matters and the rate is the mean fill to the k.
        return (-(lambda * k * miss_one).exp_m1()).powf(k);
    }
    let ln_lambda = lambda.ln();
    // Sum the Poisson terms within mean +- (8 sigma + 20): the mass outside is below
    // 1e-12. The window keeps the cost bounded for any load.
    let spread = 8.0 * lambda.sqrt() + 20.0;
    let first = (lambda - spread).max(0.0).floor() as u64;
    let last = (lambda + spread).ceil() as u64;
    let mut sum = 0.0;
    for i in first..=last {
        let x = i as f64;
        let p = (-lambda + x * ln_lambda - ln_factorial(i)).exp();
        sum += p * block_fp(x * k, k);
    }
    sum.min(1.0)
}

/// The chance that `k` probe positions all land on set bits of a block into which
/// `draws` positions were set (with replacement).
///
/// With `X` bits set the chance is `(X / 512)^k`. Taking `X` at its mean gives the
/// textbook `q^k`; the second term, `C(k, 2) q^(k-2) Var(X) / 512^2`, adds the spread
/// of `X` (a second-order Taylor term), which otherwise leaves the rate 1 to 4% low.
fn block_fp(draws: f64, k: f64) -> f64 {
    let b = BLOCK_BITS as f64;
    let miss = (1.0 - 1.0 / b).powf(draws);
    let q = 1.0 - miss;
    // Occupancy variance of `draws` balls in `b` bins.
    let var = b * (b - 1.0) * (1.0 - 2.0 / b).powf(draws) + b * miss - b * b * miss * miss;
    let spread = k * (k - 1.0) / 2.0 * q.powf(k - 2.0) * var.max(0.0) / (b * b);
    (q.powf(k) + spread).min(1.0)
}

/// `ln(n!)`: exact below 32, Stirling's series above (error under 1e-12).
fn ln_factorial(n: u64) -> f64 {
    if n < 32 {
        return (2..=n).map(|i| (i as f64).ln()).sum();
    }
    let x = n as f64;
    let inv = 1.0 / x;
    x * x.ln() - x + 0.5 * (std::f64::consts::TAU * x).ln() + inv / 12.0 - inv.powi(3) / 360.0
}

fn layout_fp(layout: Layout, bits: u64, hashes: u32, n: u64) -> f64 {
    match layout {
        Layout::Blocked => blocked_fp(bits, hashes, n),
        Layout::Standard | Layout::StandardV1 => standard_fp(bits, hashes, n),
    }
}

/// Sizes a filter for `capacity` IDs at false-positive rate `fp`, choosing the layout
/// as the module docs describe.
///
/// # Errors
///
/// [`Error::InvalidConfig`] naming the field when `capacity` is 0, `fp` is not strictly
/// between 0 and 1, `fp` needs more than [`MAX_HASHES`] positions, or the filter would
/// exceed [`MAX_FILTER_BYTES`].
pub fn size_filter(capacity: u64, fp: f64) -> Result<FilterSizing, Error> {
    let blocked = size_filter_with_layout(capacity, fp, Layout::Blocked)?;
    if blocked.bits_per_key() <= bits_per_key_budget(fp) {
        return Ok(blocked);
    }
    let standard = size_filter_with_layout(capacity, fp, Layout::Standard)?;
    Ok(if standard.bits < blocked.bits {
        standard
    } else {
        blocked
    })
}

/// Sizes a filter with a given layout: the fewest bits (in whole blocks) and, for them,
/// the number of positions that meets `fp`.
///
/// # Errors
///
/// As [`size_filter`].
pub fn size_filter_with_layout(
    capacity: u64,
    fp: f64,
    layout: Layout,
) -> Result<FilterSizing, Error> {
    validate(capacity, fp)?;
    // No layout beats the standard filter's optimum, -ln(fp) / ln(2)^2 bits per ID.
    let optimum_bytes = capacity as f64 * -fp.ln() / std::f64::consts::LN_2.powi(2) / 8.0;
    if optimum_bytes > MAX_FILTER_BYTES as f64 {
        return Err(too_large(capacity, fp));
    }
    let target = fp * SIZING_HEADROOM;
    // The standard layout is best at k = log2(1/fp); the blocked layout at the same k
    // or a few fewer. Searching that neighbourhood finds the optimum of both.
    let k_star = (-target.log2()).round().max(1.0);
    let mut best: Option<(u64, u32)> = None;
    if k_star <= f64::from(MAX_HASHES) {
        let k_star = k_star as u32;
        for k in k_star.saturating_sub(4).max(1)..=(k_star + 3).min(MAX_HASHES) {
            let Some(blocks) = min_blocks(layout, capacity, k, target) else {
                continue;
            };
            if best.is_none_or(|(b, _)| blocks < b) {
                best = Some((blocks, k));
            }
        }
    }
    let (blocks, hashes) = best.ok_or_else(|| Error::InvalidConfig {
        field: "fp_rate",
        reason: format!(
            "{} is too small: it needs more than {MAX_HASHES} hashes per ID",
            show_rate(fp)
        ),
    })?;
    let bits = blocks
        .checked_mul(BLOCK_BITS)
        .filter(|bits| bits / 8 <= MAX_FILTER_BYTES)
        .ok_or_else(|| too_large(capacity, fp))?;
    Ok(FilterSizing {
        capacity,
        fp_rate: fp,
        layout,
        bits,
        hashes,
    })
}

fn validate(capacity: u64, fp: f64) -> Result<(), Error> {
    if capacity == 0 {
        return Err(Error::InvalidConfig {
            field: "capacity",
            reason: "must be at least 1".into(),
        });
    }
    if !(fp > 0.0 && fp < 1.0) {
        return Err(Error::InvalidConfig {
            field: "fp_rate",
            reason: format!("{} is not strictly between 0 and 1", show_rate(fp)),
        });
    }
    Ok(())
}

/// A rate for messages: plain decimals down to 1e-4, scientific notation below, so
/// that 1e-300 does not print as three hundred digits.
pub(crate) fn show_rate(fp: f64) -> String {
    if fp.abs() >= 1e-4 || fp == 0.0 || !fp.is_finite() {
        format!("{fp}")
    } else {
        format!("{fp:e}")
    }
}

fn too_large(capacity: u64, fp: f64) -> Error {
    Error::InvalidConfig {
        field: "capacity",
        reason: format!(
            "{capacity} IDs at fp {} need a filter over the {} GiB limit",
            show_rate(fp),
            MAX_FILTER_BYTES >> 30
        ),
    }
}

/// The fewest 512-bit blocks with which `k` positions per ID meet `target` after
/// `capacity` IDs, or `None` when no size within [`MAX_FILTER_BYTES`] does.
fn min_blocks(layout: Layout, capacity: u64, k: u32, target: f64) -> Option<u64> {
    let max_blocks = MAX_FILTER_BYTES * 8 / BLOCK_BITS;
    // The standard layout's size in closed form: (1 - e^(-kn/m))^k = target.
    let kf = f64::from(k);
    let m_standard = -kf * capacity as f64 / (-target.powf(1.0 / kf)).ln_1p();
    let blocks = (m_standard / BLOCK_BITS as f64).ceil();
    if !blocks.is_finite() || blocks > max_blocks as f64 {
        return None;
    }
    let standard = (blocks as u64).max(1);
    if layout != Layout::Blocked {
        return Some(standard);
    }
    // A blocked filter does no better than a standard one of the same size, so the
    // search starts there and gallops upwards, then bisects.
    let fits = |blocks: u64| blocked_fp(blocks * BLOCK_BITS, k, capacity) <= target;
    let (mut lo, mut hi) = (standard - 1, standard);
    let mut step = standard / 32 + 1;
    while !fits(hi) {
        if hi == max_blocks {
            return None;
        }
        lo = hi;
        hi = (hi + step).min(max_blocks);
        step *= 2;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) { hi = mid } else { lo = mid }
    }
    Some(hi)
}

/// Estimated number of distinct IDs in a filter from its set bits (Swamidass and
/// Baldi): `-(m / k) ln(1 - X / m)`. Infinite for a saturated filter.
#[must_use]
pub fn estimated_items(bits: u64, hashes: u32, ones: u64) -> f64 {
    if bits == 0 || hashes == 0 {
        return 0.0;
    }
    let m = bits as f64;
    -(m / f64::from(hashes)) * (-(ones as f64) / m).ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_at_a_stricter_rate_is_smaller() {
        let sizing = size_filter(100_000, 0.01).unwrap();
        assert_eq!(sizing.capacity_at(0.01), 100_000);
        assert_eq!(
            sizing.capacity_at(0.5),
            100_000,
            "never past the sized capacity"
        );
        let strict = sizing.capacity_at(0.001);
        assert!(strict > 10_000 && strict < 100_000, "{strict}");
        assert!(sizing.fp_after(strict) <= 0.001);
        assert!(sizing.fp_after(strict + 1) > 0.001);
    }

    #[test]
    fn per_generation_split_composes_back_to_the_target() {
        for &(fp, g) in &[(0.01, 1), (0.01, 4), (0.001, 10), (1e-6, 3)] {
            let p = per_generation_fp(fp, g);
            let total = 1.0 - (1.0 - p).powi(g as i32);
            assert!((total - fp).abs() <= fp * 1e-9, "{fp} over {g}: {total}");
            assert!(p >= fp / f64::from(g));
        }
    }

    #[test]
    fn one_percent_fits_the_budget_with_the_blocked_layout() {
        let s = size_filter(1_000_000, 0.01).unwrap();
        assert_eq!(s.layout, Layout::Blocked);
        assert!(s.bits_per_key() <= bits_per_key_budget(0.01), "{s:?}");
        assert!(s.bits_per_key() <= 10.54);
        assert!(s.theoretical_fp() <= 0.01);
        assert_eq!(s.bits % BLOCK_BITS, 0);
    }

    #[test]
    fn tiny_rates_fall_back_to_the_standard_layout() {
        let s = size_filter(1_000_000, 1e-5).unwrap();
        assert_eq!(s.layout, Layout::Standard);
        assert!(s.bits_per_key() <= bits_per_key_budget(1e-5));
        assert!(s.theoretical_fp() <= 1e-5);
    }

    #[test]
    fn sizes_stay_within_budget_across_rates() {
        for &fp in &[0.5, 0.1, 0.03, 0.01, 0.0025, 1e-3, 1e-4, 1e-6, 1e-9] {
            let s = size_filter(100_000, fp).unwrap();
            assert!(s.theoretical_fp() <= fp, "{fp}: {s:?}");
            assert!(
                s.bits_per_key() <= bits_per_key_budget(fp).max(2.0),
                "{fp}: {} bits per key",
                s.bits_per_key()
            );
        }
    }

    #[test]
    fn standard_sizing_matches_the_closed_form_optimum() {
        let s = size_filter_with_layout(1_000_000, 0.01, Layout::Standard).unwrap();
        // The optimum is 9.585 bits per key with k = 7; we aim 3% under the target
        // and round up to whole blocks.
        assert_eq!(s.hashes, 7);
        assert!(
            (9.6..9.9).contains(&s.bits_per_key()),
            "{}",
            s.bits_per_key()
        );
    }

    #[test]
    fn blocked_rate_is_above_standard_rate_at_equal_size() {
        let bits = 10 * 1_000_000 / BLOCK_BITS * BLOCK_BITS;
        let b = blocked_fp(bits, 7, 1_000_000);
        let s = standard_fp(bits, 7, 1_000_000);
        assert!(b > s && b < 1.5 * s, "blocked {b} standard {s}");
    }

    #[test]
    fn rates_are_monotone_in_size_and_load() {
        assert!(blocked_fp(1 << 20, 6, 100_000) < blocked_fp(1 << 19, 6, 100_000));
        assert!(blocked_fp(1 << 20, 6, 50_000) < blocked_fp(1 << 20, 6, 100_000));
        assert_eq!(blocked_fp(1 << 20, 6, 0), 0.0);
        assert_eq!(blocked_fp(0, 6, 10), 1.0);
        assert_eq!(standard_fp(0, 6, 10), 1.0);
    }

    #[test]
    fn bad_parameters_name_their_field() {
        let field = |r: Result<FilterSizing, Error>| match r {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert_eq!(field(size_filter(0, 0.01)), "capacity");
        for fp in [0.0, 1.0, -0.5, 2.0, f64::NAN, f64::INFINITY] {
            assert_eq!(field(size_filter(10, fp)), "fp_rate", "{fp}");
        }
        assert_eq!(field(size_filter(u64::MAX, 0.01)), "capacity");
        assert_eq!(field(size_filter(1 << 40, 0.01)), "capacity");
        assert_eq!(field(size_filter(10, 1e-300)), "fp_rate");
    }

    #[test]
    fn ln_factorial_is_continuous_across_the_switch() {
        let exact: f64 = (2..=40_u64).map(|i| (i as f64).ln()).sum();
        assert!((ln_factorial(40) - exact).abs() < 1e-9);
        assert_eq!(ln_factorial(0), 0.0);
        assert_eq!(ln_factorial(1), 0.0);
    }

    #[test]
    fn blocked_rate_is_cheap_even_when_overloaded() {
        // A mean load of 10^12 IDs per block must not loop 10^12 times.
        assert!(blocked_fp(BLOCK_BITS, 7, 1_000_000_000_000) > 0.999);
    }

    #[test]
    fn item_estimate_inverts_the_expected_fill() {
        let (m, k, n) = (1_u64 << 20, 7, 100_000_u64);
        let expected_ones = m as f64 * -(-f64::from(k) * n as f64 / m as f64).exp_m1();
        let est = estimated_items(m, k, expected_ones.round() as u64);
        assert!((est - n as f64).abs() < n as f64 * 0.001, "{est}");
        assert!(estimated_items(m, k, m).is_infinite());
        assert_eq!(estimated_items(0, k, 0), 0.0);
    }
}
