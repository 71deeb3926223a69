//! Namespace configuration: how much a namespace remembers, for how long, how exactly.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::sizing::{FilterSizing, per_generation_fp, size_filter};

/// The most generations a namespace may keep.
pub const MAX_GENERATIONS: u32 = 1024;

/// The most filter memory one namespace may need across its generations: 64 GiB.
pub const MAX_NAMESPACE_FILTER_BYTES: u64 = 64 << 30;

/// A namespace's configuration, validated.
///
/// Build one with [`NamespaceConfig::builder`]; [`NamespaceConfig::default`] gives 4
/// generations of up to 1,000,000 IDs or 1 hour each, a 1% false-positive target and
/// exact tables for the 2 newest generations.
///
/// ```
/// use std::time::Duration;
/// use oncely::NamespaceConfig;
///
/// let config = NamespaceConfig::builder()
///     .generations(6)
///     .generation_capacity(5_000_000)
///     .generation_span(Duration::from_secs(600))
///     .fp_rate(0.001)
///     .exact_generations(3)
///     .build()?;
/// // An ID is remembered for at least (generations - 1) spans, unless traffic fills
/// // generations faster: see `remembers_at_least`.
/// assert_eq!(config.remembers_at_least(), (Duration::from_secs(3000), 25_000_000));
/// # Ok::<(), oncely::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ConfigSpec", into = "ConfigSpec")]
pub struct NamespaceConfig {
    generations: u32,
    generation_capacity: u64,
    generation_span: Duration,
    fp_rate: f64,
    exact_generations: u32,
    /// Derived from the fields above at validation, so every generation opened
    /// reuses it instead of searching again.
    sizing: FilterSizing,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        Self::validate(&ConfigSpec::default()).expect("the defaults are valid")
    }
}

impl NamespaceConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> NamespaceConfigBuilder {
        NamespaceConfigBuilder {
            spec: ConfigSpec::from(Self::default()),
        }
    }

    /// A builder starting from this configuration, to change some of it.
    pub fn to_builder(&self) -> NamespaceConfigBuilder {
        NamespaceConfigBuilder {
            spec: ConfigSpec::from(self.clone()),
        }
    }

    /// Generations in the ring, the open one included.
    #[must_use]
    pub const fn generations(&self) -> u32 {
        self.generations
    }

    /// New IDs after which the open generation seals.
    #[must_use]
    pub const fn generation_capacity(&self) -> u64 {
        self.generation_capacity
    }

    /// Time after which the open generation seals.
    #[must_use]
    pub const fn generation_span(&self) -> Duration {
        self.generation_span
    }

    /// Target false-positive rate of a check across all live generations.
    #[must_use]
    pub const fn fp_rate(&self) -> f64 {
        self.fp_rate
    }

    /// How many of the newest generations keep an exact ID table.
    #[must_use]
    pub const fn exact_generations(&self) -> u32 {
        self.exact_generations
    }

    /// The false-positive rate each generation's filter is sized for.
    #[must_use]
    pub fn generation_fp_rate(&self) -> f64 {
        per_generation_fp(self.fp_rate, self.generations)
    }

    /// The sizing of each generation's filter.
    #[must_use]
    pub const fn filter_sizing(&self) -> FilterSizing {
        self.sizing
    }

    /// The remembering guarantee as `(time, new IDs)`: an ID is remembered for at
    /// least `(generations - 1) x generation_span` when fewer than
    /// `generation_capacity` new IDs arrive per span, and for at least
    /// `(generations - 1) x generation_capacity` later new IDs when traffic is faster.
    ///
    /// The exact rule, which covers any mix: an ID marked when `T` time ago, with `N`
    /// new IDs marked since, is remembered while
    /// `floor(N / generation_capacity) + floor(T / generation_span) < generations - 1`.
    /// Each of the `generations - 1` generations opened after the ID's own must seal
    /// before the ID's generation is dropped, and each seals only when full (adding
    /// `generation_capacity` to `N`) or after its span (adding `generation_span` to `T`).
    ///
    /// `T` is *running* time: time that passed on the tracker's clock while a tracker
    /// had the namespace open. Downtime between runs is not counted (generations do
    /// not age while nothing can mark into them), nor is a wall clock stepped forward
    /// or back while the process was down: a restart carries the open generation's age
    /// over instead of comparing two processes' wall clocks, and
    /// [`crate::SystemClock`] is monotonic within a run. Since running time never
    /// exceeds real time, the guarantee holds in real time too, whatever the wall
    /// clock does. A crash can lose the last second or so of the open generation's
    /// age (more if idle without [`crate::Tracker::tick`]); that only delays its
    /// seal, so IDs are remembered longer, never shorter.
    #[must_use]
    pub fn remembers_at_least(&self) -> (Duration, u64) {
        let older = self.generations - 1;
        (
            self.generation_span.saturating_mul(older),
            self.generation_capacity.saturating_mul(u64::from(older)),
        )
    }

    fn validate(spec: &ConfigSpec) -> Result<Self, Error> {
        let bad = |field: &'static str, reason: String| Err(Error::InvalidConfig { field, reason });
        if !(1..=MAX_GENERATIONS).contains(&spec.generations) {
            return bad(
                "generations",
                format!("{} is outside 1..={MAX_GENERATIONS}", spec.generations),
            );
        }
        if spec.generation_capacity == 0 {
            return bad("generation_capacity", "must be at least 1".into());
        }
        let span = spec.generation_span.0;
        if span < Duration::from_millis(1) {
            return bad("generation_span", "must be at least 1ms".into());
        }
        if !(spec.fp_rate > 0.0 && spec.fp_rate < 1.0) {
            return bad(
                "fp_rate",
                format!(
                    "{} is not strictly between 0 and 1",
                    crate::sizing::show_rate(spec.fp_rate)
                ),
            );
        }
        if !(1..=spec.generations).contains(&spec.exact_generations) {
            return bad(
                "exact_generations",
                format!(
                    "{} is outside 1..=generations ({}): the open generation always \
                     keeps its exact table, which is what makes marks durable",
                    spec.exact_generations, spec.generations
                ),
            );
        }
        // Surfaces sizes that overflow memory, or rates that need too many hashes.
        let sizing = size_filter(
            spec.generation_capacity,
            per_generation_fp(spec.fp_rate, spec.generations),
        )
        .map_err(|e| match e {
            Error::InvalidConfig {
                field: "capacity",
                reason,
            } => Error::InvalidConfig {
                field: "generation_capacity",
                reason,
            },
            other => other,
        })?;
        let total = sizing
            .memory_bytes()
            .saturating_mul(u64::from(spec.generations));
        if total > MAX_NAMESPACE_FILTER_BYTES {
            return bad(
                "generations",
                format!(
                    "{} generations of {} bytes of filter need {total} bytes, over the \
                     {} GiB limit per namespace",
                    spec.generations,
                    sizing.memory_bytes(),
                    MAX_NAMESPACE_FILTER_BYTES >> 30
                ),
            );
        }
        Ok(Self {
            generations: spec.generations,
            generation_capacity: spec.generation_capacity,
            generation_span: span,
            fp_rate: spec.fp_rate,
            exact_generations: spec.exact_generations,
            sizing,
        })
    }
}

/// A consuming builder for [`NamespaceConfig`]; [`build`](Self::build) validates.
#[derive(Clone, Debug)]
#[must_use]
pub struct NamespaceConfigBuilder {
    spec: ConfigSpec,
}

impl NamespaceConfigBuilder {
    /// Generations in the ring (1 to 1024).
    pub const fn generations(mut self, n: u32) -> Self {
        self.spec.generations = n;
        self
    }

    /// New IDs after which the open generation seals (at least 1).
    pub const fn generation_capacity(mut self, n: u64) -> Self {
        self.spec.generation_capacity = n;
        self
    }

    /// Time after which the open generation seals (at least 1 ms).
    pub const fn generation_span(mut self, d: Duration) -> Self {
        self.spec.generation_span = HumanDuration(d);
        self
    }

    /// Target false-positive rate across all generations, strictly between 0 and 1.
    pub const fn fp_rate(mut self, p: f64) -> Self {
        self.spec.fp_rate = p;
        self
    }

    /// How many of the newest generations keep an exact table (1 to `generations`).
    pub const fn exact_generations(mut self, n: u32) -> Self {
        self.spec.exact_generations = n;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first field out of range.
    pub fn build(self) -> Result<NamespaceConfig, Error> {
        NamespaceConfig::validate(&self.spec)
    }
}

/// The serialised form of a configuration: every field optional, defaults filled in.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConfigSpec {
    generations: u32,
    generation_capacity: u64,
    generation_span: HumanDuration,
    fp_rate: f64,
    exact_generations: u32,
}

impl Default for ConfigSpec {
    fn default() -> Self {
        Self {
            generations: 4,
            generation_capacity: 1_000_000,
            generation_span: HumanDuration(Duration::from_secs(3600)),
            fp_rate: 0.01,
            exact_generations: 2,
        }
    }
}

impl From<NamespaceConfig> for ConfigSpec {
    fn from(c: NamespaceConfig) -> Self {
        Self {
            generations: c.generations,
            generation_capacity: c.generation_capacity,
            generation_span: HumanDuration(c.generation_span),
            fp_rate: c.fp_rate,
            exact_generations: c.exact_generations,
        }
    }
}

impl TryFrom<ConfigSpec> for NamespaceConfig {
    type Error = Error;

    fn try_from(spec: ConfigSpec) -> Result<Self, Error> {
        Self::validate(&spec)
    }
}

/// Some or all of a namespace's configuration fields, as a `PUT`, a `PATCH` or a
/// configuration file gives them.
///
/// A whole configuration must name every field: a missing one is refused rather than
/// filled with its default, because a default silently replacing a namespace's
/// setting (6 generations becoming 4, say) forgets remembered IDs.
/// [`complete`](Self::complete) builds a whole configuration and names every missing
/// field; [`apply_to`](Self::apply_to) changes only the fields given.
///
/// ```
/// use oncely::config::ConfigFields;
///
/// let put: ConfigFields = serde_json::from_str(r#"{"generations": 6, "fp_rate": 0.001}"#)?;
/// let err = put.complete().unwrap_err();
/// assert!(err.to_string().contains("generation_capacity, generation_span, exact_generations"), "{err}");
///
/// let patch: ConfigFields = serde_json::from_str(r#"{"generations": 6}"#)?;
/// let changed = patch.apply_to(&oncely::NamespaceConfig::default())?;
/// assert_eq!((changed.generations(), changed.exact_generations()), (6, 2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFields {
    /// Generations in the ring, the open one included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generations: Option<u32>,
    /// New IDs after which the open generation seals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_capacity: Option<u64>,
    /// Time after which the open generation seals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_span: Option<HumanDuration>,
    /// Target false-positive rate across all live generations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp_rate: Option<f64>,
    /// How many of the newest generations keep an exact table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_generations: Option<u32>,
}

impl ConfigFields {
    /// The names of the fields, in the order they are documented.
    pub const NAMES: [&'static str; 5] = [
        "generations",
        "generation_capacity",
        "generation_span",
        "fp_rate",
        "exact_generations",
    ];

    /// The names of the fields not given.
    #[must_use]
    pub fn missing(&self) -> Vec<&'static str> {
        let given = [
            self.generations.is_some(),
            self.generation_capacity.is_some(),
            self.generation_span.is_some(),
            self.fp_rate.is_some(),
            self.exact_generations.is_some(),
        ];
        Self::NAMES
            .iter()
            .zip(given)
            .filter(|(_, given)| !given)
            .map(|(name, _)| *name)
            .collect()
    }

    /// A whole configuration from these fields.
    ///
    /// # Errors
    ///
    /// [`Error::MissingFields`] naming every field not given; [`Error::InvalidConfig`]
    /// for a value out of range.
    pub fn complete(&self) -> Result<NamespaceConfig, Error> {
        let missing = self.missing();
        if !missing.is_empty() {
            return Err(Error::MissingFields(missing));
        }
        self.apply_to(&NamespaceConfig::default())
    }

    /// `base` with the given fields changed.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a value out of range, or a combination that is
    /// (`exact_generations` over `generations`, say).
    pub fn apply_to(&self, base: &NamespaceConfig) -> Result<NamespaceConfig, Error> {
        let mut spec = ConfigSpec::from(base.clone());
        if let Some(n) = self.generations {
            spec.generations = n;
        }
        if let Some(n) = self.generation_capacity {
            spec.generation_capacity = n;
        }
        if let Some(d) = self.generation_span {
            spec.generation_span = d;
        }
        if let Some(p) = self.fp_rate {
            spec.fp_rate = p;
        }
        if let Some(n) = self.exact_generations {
            spec.exact_generations = n;
        }
        NamespaceConfig::validate(&spec)
    }
}

impl From<&NamespaceConfig> for ConfigFields {
    fn from(c: &NamespaceConfig) -> Self {
        Self {
            generations: Some(c.generations),
            generation_capacity: Some(c.generation_capacity),
            generation_span: Some(HumanDuration(c.generation_span)),
            fp_rate: Some(c.fp_rate),
            exact_generations: Some(c.exact_generations),
        }
    }
}

/// A duration written for humans, in the one grammar of [`oncely_duration`]:
/// `"250ms"`, `"30s"`, `"15m"`, `"1h"`, `"1 h"`, `"7d"`, or a bare number of
/// seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses the forms listed on the type.
    ///
    /// # Errors
    ///
    /// A message saying what was expected.
    pub fn parse(s: &str) -> Result<Self, String> {
        oncely_duration::parse(s).map(Self)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        oncely_duration::Display(self.0).fmt(f)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = HumanDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like \"250ms\", \"30s\", \"1h\" or a number of seconds")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                HumanDuration::parse(v).map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                Ok(HumanDuration(Duration::from_secs(v)))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                u64::try_from(v)
                    .map(|v| HumanDuration(Duration::from_secs(v)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Result<NamespaceConfig, Error>) -> &'static str {
        match r {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = NamespaceConfig::builder().build().unwrap();
        assert_eq!(c, NamespaceConfig::default());
        assert!(c.filter_sizing().memory_bytes() < 2_000_000);
    }

    #[test]
    fn every_bad_field_is_named() {
        let b = NamespaceConfig::builder;
        assert_eq!(field_of(b().generations(0).build()), "generations");
        assert_eq!(field_of(b().generations(5000).build()), "generations");
        assert_eq!(
            field_of(b().generation_capacity(0).build()),
            "generation_capacity"
        );
        assert_eq!(
            field_of(b().generation_capacity(u64::MAX).build()),
            "generation_capacity"
        );
        assert_eq!(
            field_of(b().generation_span(Duration::ZERO).build()),
            "generation_span"
        );
        assert_eq!(field_of(b().fp_rate(0.0).build()), "fp_rate");
        assert_eq!(field_of(b().fp_rate(1.0).build()), "fp_rate");
        assert_eq!(field_of(b().fp_rate(f64::NAN).build()), "fp_rate");
        assert_eq!(
            field_of(b().exact_generations(0).build()),
            "exact_generations"
        );
        assert_eq!(
            field_of(b().generations(3).exact_generations(4).build()),
            "exact_generations"
        );
        // 1024 generations of 1e9 IDs fit one by one, not together.
        assert_eq!(
            field_of(
                b().generations(1024)
                    .generation_capacity(1_000_000_000)
                    .build()
            ),
            "generations"
        );
    }

    #[test]
    fn serde_fills_defaults_and_validates() {
        let c: NamespaceConfig =
            serde_json::from_str(r#"{"generations": 8, "generation_span": "10m"}"#).unwrap();
        assert_eq!(c.generations(), 8);
        assert_eq!(c.generation_span(), Duration::from_secs(600));
        assert_eq!(c.fp_rate(), 0.01);
        let back: NamespaceConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let err = serde_json::from_str::<NamespaceConfig>(r#"{"fp_rate": 2}"#).unwrap_err();
        assert!(err.to_string().contains("fp_rate"), "{err}");
        assert!(serde_json::from_str::<NamespaceConfig>(r#"{"bogus": 1}"#).is_err());
        let secs: NamespaceConfig = serde_json::from_str(r#"{"generation_span": 90}"#).unwrap();
        assert_eq!(secs.generation_span(), Duration::from_secs(90));
    }

    #[test]
    fn whole_configurations_name_every_missing_field() {
        let none = ConfigFields::default();
        match none.complete() {
            Err(Error::MissingFields(missing)) => assert_eq!(missing, ConfigFields::NAMES),
            other => panic!("{other:?}"),
        }
        let all = ConfigFields::from(&NamespaceConfig::default());
        assert!(all.missing().is_empty());
        assert_eq!(all.complete().unwrap(), NamespaceConfig::default());
        let some = ConfigFields {
            generations: Some(6),
            fp_rate: Some(0.5),
            ..ConfigFields::default()
        };
        assert_eq!(
            some.missing(),
            [
                "generation_capacity",
                "generation_span",
                "exact_generations"
            ]
        );
        let patched = some.apply_to(&NamespaceConfig::default()).unwrap();
        assert_eq!((patched.generations(), patched.fp_rate()), (6, 0.5));
        assert_eq!(patched.generation_capacity(), 1_000_000);
        let bad = ConfigFields {
            exact_generations: Some(9),
            ..ConfigFields::default()
        };
        assert_eq!(
            field_of(bad.apply_to(&NamespaceConfig::default())),
            "exact_generations"
        );
        assert!(serde_json::from_str::<ConfigFields>(r#"{"generation": 3}"#).is_err());
    }

    #[test]
    fn human_durations() {
        for (s, ms) in [
            ("250ms", 250),
            ("30s", 30_000),
            ("30", 30_000),
            ("15m", 900_000),
            ("1h", 3_600_000),
            ("7d", 604_800_000),
        ] {
            assert_eq!(
                HumanDuration::parse(s).unwrap().0,
                Duration::from_millis(ms),
                "{s}"
            );
            assert_eq!(
                HumanDuration::parse(&HumanDuration(Duration::from_millis(ms)).to_string())
                    .unwrap()
                    .0,
                Duration::from_millis(ms)
            );
        }
        for bad in ["", "h", "1w", "-1s", "99999999999999999999d"] {
            assert!(HumanDuration::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            HumanDuration(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
    }

    #[test]
    fn the_guarantee_counts_the_older_generations() {
        let c = NamespaceConfig::builder()
            .generations(1)
            .exact_generations(1)
            .build()
            .unwrap();
        assert_eq!(c.remembers_at_least(), (Duration::ZERO, 0));
        assert_eq!(NamespaceConfig::default().remembers_at_least().1, 3_000_000);
    }
}
