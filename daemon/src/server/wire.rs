//! Between the library's types and the wire types of [`oncely_client::api`]: verdicts,
//! claim outcomes and namespace views out, configuration fields in.
//!
//! The wire types know nothing of the library (a consumer builds them without it), so
//! the conversions live here, on the server's side.

use oncely::{
    ClaimOutcome, ConfigFields, FilterBudget, GenerationInfo, HumanDuration, NamespaceInfo, Verdict,
};
use oncely_client::api::{
    CheckResult, ClaimResponse, ClaimVerdict, FilterBudgetView, FilterView, GenerationView,
    MarkResult, NamespaceConfig, NamespacePatch, NamespaceView, Remembers, VerdictName,
};
use std::borrow::Cow;

/// The name and, for `in_progress`, the lease end in milliseconds since the epoch.
pub(crate) const fn verdict_name(verdict: Verdict) -> (VerdictName, Option<u64>) {
    match verdict {
        Verdict::New | Verdict::Replayed => (VerdictName::New, None),
        Verdict::Duplicate => (VerdictName::Duplicate, None),
        Verdict::ProbableDuplicate => (VerdictName::ProbableDuplicate, None),
        Verdict::InProgress { until } => (VerdictName::InProgress, Some(until.as_millis())),
    }
}

/// One ID's check-and-mark result.
pub(crate) const fn mark_result(id: &str, verdict: Verdict) -> MarkResult<'_> {
    let (name, until_ms) = verdict_name(verdict);
    MarkResult {
        id: Cow::Borrowed(id),
        verdict: name,
        replayed: verdict.is_replayed(),
        until_ms,
    }
}

/// One ID's check result.
pub(crate) const fn check_result(id: &str, verdict: Verdict) -> CheckResult<'_> {
    let (name, until_ms) = verdict_name(verdict);
    CheckResult {
        id: Cow::Borrowed(id),
        verdict: name,
        until_ms,
    }
}

/// The answer to a claim.
pub(crate) const fn claim_response(outcome: ClaimOutcome) -> ClaimResponse {
    let (verdict, until_ms, replayed, taken_over) = match outcome {
        ClaimOutcome::Acquired {
            until,
            replayed,
            taken_over,
        } => (
            ClaimVerdict::Acquired,
            Some(until.as_millis()),
            Some(replayed),
            Some(taken_over),
        ),
        ClaimOutcome::InProgress { until } => (
            ClaimVerdict::InProgress,
            Some(until.as_millis()),
            None,
            None,
        ),
        ClaimOutcome::Duplicate => (ClaimVerdict::Duplicate, None, None, None),
        ClaimOutcome::ProbableDuplicate => (ClaimVerdict::ProbableDuplicate, None, None, None),
    };
    ClaimResponse {
        verdict,
        until_ms,
        replayed,
        taken_over,
    }
}

/// A configuration as the wire shows it.
pub(crate) fn config(c: &oncely::NamespaceConfig) -> NamespaceConfig {
    NamespaceConfig {
        generations: c.generations(),
        generation_capacity: c.generation_capacity(),
        generation_span: c.generation_span(),
        fp_rate: c.fp_rate(),
        exact_generations: c.exact_generations(),
    }
}

/// The library's view of the configuration fields of a `PUT` or `PATCH` body.
pub(crate) fn fields(patch: &NamespacePatch) -> ConfigFields {
    ConfigFields {
        generations: patch.generations,
        generation_capacity: patch.generation_capacity,
        generation_span: patch.generation_span.map(HumanDuration),
        fp_rate: patch.fp_rate,
        exact_generations: patch.exact_generations,
    }
}

/// A namespace's configuration and statistics.
pub(crate) fn namespace_view(info: NamespaceInfo, budget: FilterBudget) -> NamespaceView {
    let (span, ids) = info.config.remembers_at_least();
    NamespaceView {
        name: info.name,
        remembers_at_least: Remembers {
            ms: u64::try_from(span.as_millis()).unwrap_or(u64::MAX),
            ids,
        },
        config: config(&info.config),
        generations: info.generations.iter().map(generation_view).collect(),
        estimated_fp: info.estimated_fp,
        memory_bytes: info.memory_bytes,
        charged_bytes: info.charged_bytes,
        filter_budget: Some(FilterBudgetView {
            budget_bytes: budget.budget,
            charged_bytes: budget.charged,
            allocated_bytes: budget.allocated,
        }),
    }
}

fn generation_view(g: &GenerationInfo) -> GenerationView {
    GenerationView {
        id: g.id,
        opened_at_ms: g.opened_at,
        sealed_at_ms: g.sealed_at,
        ids: g.ids,
        exact: g.exact,
        filter: FilterView {
            bits: g.filter.bits,
            ones: g.filter.ones,
            fill_ratio: g.filter.fill_ratio,
            estimated_items: g.filter.estimated_items,
            estimated_fp: g.filter.estimated_fp,
            inserted: g.filter.inserted,
        },
        memory_bytes: g.memory_bytes,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The client crate's defaults are the library's: the two are written
    /// separately (the client must not depend on the library), so this test keeps
    /// them together. Durations share one grammar (`oncely-duration`); this checks
    /// that both read and write it alike.
    #[test]
    fn the_wire_agrees_with_the_library() {
        assert_eq!(
            config(&oncely::NamespaceConfig::default()),
            NamespaceConfig::default()
        );
        for span in [
            "250ms", "1500ms", "30s", "90", "15m", "1h", "1 h", "7d", "0001s",
        ] {
            let wire: NamespacePatch =
                serde_json::from_str(&format!(r#"{{"generation_span": "{span}"}}"#)).unwrap();
            let library = HumanDuration::parse(span).unwrap();
            assert_eq!(wire.generation_span, Some(library.0), "{span}");
            assert_eq!(
                serde_json::to_value(wire).unwrap()["generation_span"],
                serde_json::to_value(library).unwrap(),
                "{span} is written back the same way"
            );
        }
        let whole = NamespacePatch::from(&NamespaceConfig {
            generation_span: Duration::from_secs(600),
            ..NamespaceConfig::default()
        });
        assert!(whole.missing().is_empty());
        assert!(fields(&whole).missing().is_empty());
    }
}
