//! Bounds on namespaces: the filter memory budget and the namespace cap. A request
//! over either is refused with the numbers, and changes nothing.

mod common;

use std::sync::Arc;

use common::{clock, ring_config};
use oncely::{Durability, Error, NamespaceConfig, Tracker};

fn config(capacity: u64) -> NamespaceConfig {
    ring_config(4, 2, capacity, std::time::Duration::from_secs(3600), 0.001)
}

fn open(budget: Option<u64>, namespaces: Option<u32>) -> Tracker {
    let mut b = Tracker::builder()
        .durability(Durability::Memory)
        .clock(Arc::new(clock()))
        .default_config(config(1_000));
    if let Some(bytes) = budget {
        b = b.max_filter_bytes(bytes);
    }
    if let Some(n) = namespaces {
        b = b.max_namespaces(n);
    }
    b.open().unwrap()
}

#[test]
fn namespaces_fit_the_budget_and_the_next_is_refused_with_the_numbers() {
    // What one namespace of 100,000-ID generations is charged.
    let probe = open(None, None);
    let _ = probe.configure_namespace("probe", config(100_000)).unwrap();
    let each = probe.namespace_info("probe").unwrap().charged_bytes;
    let default = probe.namespace_info("default").unwrap().charged_bytes;
    assert!(
        each > 4 * 100_000,
        "{each} bytes for 4 generations of 100,000 IDs"
    );

    let budget = default + 3 * each;
    let t = open(Some(budget), None);
    for name in ["a", "b", "c"] {
        let _ = t.configure_namespace(name, config(100_000)).unwrap();
    }
    match t.configure_namespace("d", config(100_000)) {
        Err(Error::OverBudget {
            asked,
            in_use,
            budget: b,
        }) => {
            assert_eq!((asked, in_use, b), (each, default + 3 * each, budget));
        }
        other => panic!("{other:?}"),
    }
    assert!(t.namespace_info("d").is_err(), "nothing was created");
    let report = t.filter_budget();
    assert_eq!(report.budget, Some(budget));
    assert_eq!(report.charged, budget);
    assert!(
        report.allocated < report.charged,
        "open generations only so far"
    );

    // Growing one that fits is refused too, and changes nothing.
    let err = t.configure_namespace("a", config(1_000_000)).unwrap_err();
    assert!(matches!(err, Error::OverBudget { .. }), "{err}");
    assert_eq!(
        t.namespace_info("a").unwrap().config.generation_capacity(),
        100_000
    );
    // Shrinking one makes room once its big generations are gone; until then its
    // charge stays.
    let _ = t.configure_namespace("a", config(1_000)).unwrap();
    assert!(t.namespace_info("a").unwrap().charged_bytes < each);
    assert!(t.configure_namespace("d", config(100_000)).is_err());
    t.delete_namespace("b").unwrap();
    let _ = t.configure_namespace("d", config(100_000)).unwrap();
}

#[test]
fn the_namespace_cap_counts_default() {
    let t = open(None, Some(3));
    let _ = t.configure_namespace("a", config(1_000)).unwrap();
    let _ = t.configure_namespace("b", config(1_000)).unwrap();
    assert!(matches!(
        t.configure_namespace("c", config(1_000)),
        Err(Error::TooManyNamespaces { max: 3 })
    ));
    // Reconfiguring an existing one is not creating one.
    let _ = t.configure_namespace("b", config(2_000)).unwrap();
    t.delete_namespace("a").unwrap();
    let _ = t.configure_namespace("c", config(1_000)).unwrap();
}

#[test]
fn a_default_namespace_over_the_budget_stops_start_up() {
    let err = Tracker::builder()
        .durability(Durability::Memory)
        .default_config(config(1_000_000))
        .max_filter_bytes(1 << 20)
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::OverBudget { .. }), "{err}");
}
