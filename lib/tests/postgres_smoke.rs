//! PostgreSQL store: the basics, against a throwaway server.
#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{NowMs, clock, small_config};
use oncely::postgres::PgOptions;
use oncely::{ClaimOutcome, Tracker, Verdict};
use oncely_testkit::PgServer;

#[test]
fn marks_claims_and_rotation_on_postgres() {
    let url = PgServer::shared().fresh_database();
    let c = clock();
    let t = Tracker::builder()
        .postgres(PgOptions::new(&url))
        .clock(Arc::new(c.clone()))
        .default_config(small_config(3))
        .open()
        .unwrap();
    assert_eq!(
        t.check_and_mark("default", &["a", "b", "a"], Some("o1"))
            .unwrap(),
        [Verdict::New, Verdict::New, Verdict::Replayed]
    );
    assert_eq!(
        t.check_and_mark("default", &["a", "c"], Some("o1"))
            .unwrap(),
        [Verdict::Replayed, Verdict::New]
    );
    assert_eq!(
        t.check_and_mark("default", &["a", "d"], None).unwrap(),
        [Verdict::Duplicate, Verdict::New],
        "d seals generation 1 first (3 IDs) and lands in 2"
    );
    let info = t.namespace_info("default").unwrap();
    assert_eq!(info.generations.len(), 2, "{info:#?}");
    assert_eq!(
        t.check("default", &["a", "d", "z"]).unwrap(),
        [Verdict::Duplicate, Verdict::Duplicate, Verdict::New]
    );
    let got = t
        .claim("default", "job", "w1", Duration::from_secs(30))
        .unwrap();
    assert!(matches!(got, ClaimOutcome::Acquired { .. }), "{got:?}");
    assert!(matches!(
        t.claim("default", "job", "w2", Duration::from_secs(30)).unwrap(),
        ClaimOutcome::InProgress { until } if until == c.now_ms().saturating_add(Duration::from_secs(30))
    ));
    t.rotate_namespace("default").unwrap();
    t.rotate_namespace("default").unwrap();
    assert!(matches!(
        t.check_and_mark("default", &["job"], None).unwrap()[0],
        Verdict::InProgress { .. }
    ));
    t.complete("default", "job", "w1").unwrap();
    assert_eq!(t.check("default", &["job"]).unwrap(), [Verdict::Duplicate]);
    t.set_checkpoint("default", "c1", "p9").unwrap();
    assert_eq!(
        t.checkpoint("default", "c1").unwrap().as_deref(),
        Some("p9")
    );
}
