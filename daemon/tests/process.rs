//! The real `oncelyd serve` binary: start-up line, configuration from flags,
//! environment and file, SIGTERM, and kill -9 under load.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, client, command, listen_addr, verdicts};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_marks_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), &["--shutdown-grace", "5s"], &[]);
    let line = daemon.log_text();
    assert!(line.contains("durability=flush"), "{line}");
    assert!(
        line.contains(&format!("data_dir={}", dir.path().display())),
        "{line}"
    );
    let c = client();
    let ids: Vec<String> = (0..1000).map(|i| format!("term-{i}")).collect();
    let mark = daemon.url("/v1/namespaces/default/check-and-mark");
    assert!(verdicts(&c, &mark, &ids).await.iter().all(|v| v == "new"));

    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status}; log:\n{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(log.contains("tracker closed cleanly"), "{log}");
    drop(daemon);

    let daemon = Daemon::start(dir.path(), &[], &[]);
    let check = daemon.url("/v1/namespaces/default/check");
    assert!(
        verdicts(&c, &check, &ids)
            .await
            .iter()
            .all(|v| v == "duplicate")
    );
    let mark = daemon.url("/v1/namespaces/default/check-and-mark");
    assert!(
        verdicts(&c, &mark, &ids)
            .await
            .iter()
            .all(|v| v == "duplicate")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_mark() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), &[], &[]);
    let url = daemon.url("/v1/namespaces/default/check-and-mark");
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for client_no in 0..3 {
        let url = url.clone();
        let acknowledged = Arc::clone(&acknowledged);
        clients.push(tokio::spawn(async move {
            let c = client();
            // Bounded: at most 400 batches per client, and the kill ends it sooner.
            for batch_no in 0..400 {
                let ids: Vec<String> = (0..200)
                    .map(|i| format!("k{client_no}-{batch_no}-{i}"))
                    .collect();
                let Ok(r) = c.post(&url).json(&json!({ "ids": ids })).send().await else {
                    return;
                };
                let Ok(v) = r.json::<Value>().await else {
                    return;
                };
                let results = v["results"].as_array().unwrap();
                let mut ack = acknowledged.lock().unwrap();
                for (id, r) in ids.iter().zip(results) {
                    assert_eq!(r["verdict"], "new", "fresh IDs are new");
                    ack.push(id.clone());
                }
            }
        }));
    }
    // Let some load through, then kill without warning.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acknowledged.lock().unwrap().len() < 10_000 {
        assert!(Instant::now() < deadline, "too little load got through");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    daemon.child.kill().unwrap();
    let status = daemon.wait_exit(Duration::from_secs(5));
    assert!(!status.success());
    for c in clients {
        tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("clients notice the kill")
            .unwrap();
    }
    drop(daemon);

    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    assert!(acknowledged.len() >= 10_000);
    let daemon = Daemon::start(dir.path(), &[], &[]);
    let check = daemon.url("/v1/namespaces/default/check");
    let c = client();
    for chunk in acknowledged.chunks(5000) {
        let got = verdicts(&c, &check, chunk).await;
        for (id, v) in chunk.iter().zip(got) {
            assert_eq!(v, "duplicate", "acknowledged {id} was lost");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_flags_env_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("oncely.toml");
    std::fs::write(
        &config,
        r#"
        # The file sets max_ids, which the environment overrides, and max_body_bytes,
        # which the flag overrides.
        max_ids = 5
        max_body_bytes = "1KiB"
        tokens = ["from-file"]

        [namespaces.orders]
        generations = 6
        generation_span = "10m"

        [namespaces.default]
        fp_rate = 0.001
        "#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--max-body-bytes",
            "64KiB",
        ],
        &[("ONCELY_MAX_IDS", "7"), ("ONCELY_TOKENS", "env-1,env-2")],
    );
    let c = client();
    let mark = daemon.url("/v1/namespaces/default/check-and-mark");
    let send =
        |body: Value, token: &'static str| c.post(&mark).bearer_auth(token).json(&body).send();
    // The environment's tokens replace the file's.
    let r = send(json!({"ids": ["a"]}), "from-file").await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let ids7: Vec<String> = (0..7).map(|i| format!("id-{i}")).collect();
    let r = send(json!({ "ids": ids7 }), "env-2").await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "env max_ids = 7 beats the file's 5"
    );
    let ids8: Vec<String> = (0..8).map(|i| format!("id-{i}")).collect();
    let r = send(json!({ "ids": ids8 }), "env-1").await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "too_many_ids");
    // The flag's 64 KiB body limit beats the file's 1 KiB.
    let long: Vec<String> = ["x", "y", "z", "w"].map(|c| c.repeat(250)).to_vec();
    let r = send(json!({ "ids": long }), "env-1").await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Namespaces declared in the file exist, configured.
    let r = c
        .get(daemon.url("/v1/namespaces/orders"))
        .bearer_auth("env-1")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["config"]["generations"], 6);
    assert_eq!(v["config"]["generation_span"], "10m");
    let r = c
        .get(daemon.url("/v1/namespaces/default"))
        .bearer_auth("env-1")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["config"]["fp_rate"], 0.001);
    // Health needs no token.
    let r = c.get(daemon.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn bad_settings_stop_start_up_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let bad_file = dir.path().join("bad.toml");
    std::fs::write(&bad_file, "max_idz = 3\n").unwrap();
    let bad_ns = dir.path().join("bad-ns.toml");
    std::fs::write(&bad_ns, "[namespaces.orders]\nfp_rate = 1.5\n").unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (vec!["--max-ids", "0"], vec![], "max_ids"),
        (
            vec![],
            vec![("ONCELY_MAX_CONCURRENCY", "0")],
            "max_concurrency",
        ),
        (vec!["--durability", "fast"], vec![], "durability"),
        (
            vec!["--max-body-bytes", "4 parsecs"],
            vec![],
            "max-body-bytes",
        ),
        (vec!["--listen", "nowhere"], vec![], "listen"),
        (vec!["--shutdown-grace", "soon"], vec![], "shutdown-grace"),
        (
            vec!["--config", bad_file.to_str().unwrap()],
            vec![],
            "max_idz",
        ),
        (
            vec!["--config", bad_ns.to_str().unwrap()],
            vec![],
            "fp_rate",
        ),
        (
            vec!["--config", "/nonexistent/oncely.toml"],
            vec![],
            "/nonexistent/oncely.toml",
        ),
    ];
    for (args, envs, needle) in cases {
        let mut all = vec!["--listen", "127.0.0.1:0", "--data-dir", data];
        all.extend(&args);
        let out = command(&all, &envs)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {envs:?} started");
        assert!(stderr.contains(needle), "{args:?} {envs:?}: {stderr}");
    }
    // Nothing was created for a refused start-up.
    assert!(!Path::new(data).exists());
}

#[test]
fn listen_address_parsing() {
    let line = "2026-01-01T00:00:00Z  INFO oncelyd::server: oncelyd listening on \
                http://127.0.0.1:4242 listen=127.0.0.1:4242 data_dir=./data durability=flush";
    assert_eq!(listen_addr(line), Some("127.0.0.1:4242".parse().unwrap()));
    assert_eq!(listen_addr("no address here"), None);
}
