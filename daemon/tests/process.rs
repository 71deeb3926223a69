//! The real `oncelyd serve` binary: start-up line, configuration from flags,
//! environment and file, SIGTERM, and kill -9 under load.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, client, command, listen_addr, run_to_exit, verdicts};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_marks_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(
        dir.path(),
        &[
            "--shutdown-grace",
            "5s",
            "--drain-delay",
            "2s",
            "--worker-threads",
            "1",
        ],
        // Tokio's own variable, which it would panic on: not read, warned about.
        &[("TOKIO_WORKER_THREADS", "0")],
    );
    let line = daemon.log_text();
    assert!(line.contains("durability=flush"), "{line}");
    assert!(line.contains("worker_threads=1"), "{line}");
    assert!(
        line.contains("TOKIO_WORKER_THREADS is set but not read"),
        "{line}"
    );
    assert!(
        line.contains(&format!("data_dir={}", dir.path().display())),
        "{line}"
    );
    let c = client();
    let ids: Vec<String> = (0..1000).map(|i| format!("term-{i}")).collect();
    let mark = daemon.url("/v1/namespaces/default/check-and-mark");
    assert!(verdicts(&c, &mark, &ids).await.iter().all(|v| v == "new"));

    daemon.signal("TERM");
    // Unready during the drain, while still listening.
    daemon.wait_log("shutting down", Duration::from_secs(5));
    let r = c.get(daemon.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let status = daemon.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status}; log:\n{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(log.contains("tracker closed cleanly"), "{log}");
    drop(daemon);

    // With no worker_threads either: the default count, still not tokio's variable.
    let daemon = Daemon::start(dir.path(), &[], &[("TOKIO_WORKER_THREADS", "abc")]);
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
async fn a_second_sigterm_stops_at_once_after_a_clean_flush() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), &["--drain-delay", "60s"], &[]);
    let c = client();
    let ids: Vec<String> = (0..300).map(|i| format!("twice-{i}")).collect();
    let mark = daemon.url("/v1/namespaces/default/check-and-mark");
    assert!(verdicts(&c, &mark, &ids).await.iter().all(|v| v == "new"));
    daemon.signal("TERM");
    daemon.wait_log("shutting down", Duration::from_secs(5));
    let r = c.get(daemon.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503, "draining");
    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}; log:\n{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(log.contains("second signal"), "{log}");
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
}

/// A whole `[namespaces.NAME]` table.
fn table(name: &str, generations: u32, capacity: u64) -> String {
    format!(
        "[namespaces.{name}]\ngenerations = {generations}\ngeneration_capacity = {capacity}\n\
         generation_span = \"1h\"\nfp_rate = 0.001\nexact_generations = 2\n"
    )
}

const TOKEN_A: &str = "env-token-one-0123456789";
const TOKEN_B: &str = "env-token-two-0123456789";
const FILE_TOKEN: &str = "file-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_flags_env_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("oncely.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            # The file sets max_ids, which the environment overrides, and max_body_bytes,
            # which the flag overrides.
            max_ids = 5
            max_body_bytes = "1KiB"
            tokens = ["{FILE_TOKEN}"]

            {}
            {}
            "#,
            table("orders", 6, 1000).replace("\"1h\"", "\"10m\""),
            table("default", 4, 100_000),
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let tokens = format!("{TOKEN_A}, {TOKEN_B}");
    let daemon = Daemon::start(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--max-body-bytes",
            "64KiB",
        ],
        &[("ONCELY_MAX_IDS", "7"), ("ONCELY_TOKENS", &tokens)],
    );
    // Each override is reported.
    let log = daemon.log_text();
    for needle in [
        "max_ids: ONCELY_MAX_IDS=7 (environment) overrides max_ids = 5 in",
        "max_body_bytes: --max-body-bytes 64KiB (command line) overrides max_body_bytes = 1KiB",
        "tokens: ONCELY_TOKENS=(2 hidden) (environment) overrides tokens = (1 hidden)",
    ] {
        assert!(log.contains(needle), "no {needle:?} in\n{log}");
    }
    assert!(!log.contains(TOKEN_A) && !log.contains(FILE_TOKEN), "{log}");
    let c = client();
    let mark = daemon.url("/v1/namespaces/default/check-and-mark");
    let send =
        |body: Value, token: &'static str| c.post(&mark).bearer_auth(token).json(&body).send();
    // The environment's tokens replace the file's.
    let r = send(json!({"ids": ["a"]}), FILE_TOKEN).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let ids7: Vec<String> = (0..7).map(|i| format!("id-{i}")).collect();
    let r = send(json!({ "ids": ids7 }), TOKEN_B).await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "env max_ids = 7 beats the file's 5"
    );
    let ids8: Vec<String> = (0..8).map(|i| format!("id-{i}")).collect();
    let r = send(json!({ "ids": ids8 }), TOKEN_A).await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "too_many_ids");
    // The flag's 64 KiB body limit beats the file's 1 KiB.
    let long: Vec<String> = ["x", "y", "z", "w"].map(|c| c.repeat(250)).to_vec();
    let r = send(json!({ "ids": long }), TOKEN_A).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Namespaces declared in the file exist, configured.
    let r = c
        .get(daemon.url("/v1/namespaces/orders"))
        .bearer_auth(TOKEN_A)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["config"]["generations"], 6);
    assert_eq!(v["config"]["generation_span"], "10m");
    let r = c
        .get(daemon.url("/v1/namespaces/default"))
        .bearer_auth(TOKEN_A)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["config"]["fp_rate"], 0.001);
    // Health needs no token.
    let r = c.get(daemon.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_single_token_variable_turns_auth_on() {
    let dir = tempfile::tempdir().unwrap();
    let token = "the-token-load-uses-0123";
    let daemon = Daemon::start(dir.path(), &[], &[("ONCELY_TOKEN", token)]);
    assert!(
        daemon.log_text().contains(r#"auth="bearer""#),
        "{}",
        daemon.log_text()
    );
    let c = client();
    let url = daemon.url("/v1/namespaces");
    assert_eq!(c.get(&url).send().await.unwrap().status().as_u16(), 401);
    let r = c.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_overriding_the_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let from_env = dir.path().join("env-data");
    let from_file = dir.path().join("file-data");
    let config = dir.path().join("oncely.toml");
    std::fs::write(
        &config,
        format!("data_dir = {:?}\n", from_file.to_str().unwrap()),
    )
    .unwrap();
    let daemon = Daemon::start_with(
        &["--config", config.to_str().unwrap()],
        &[("ONCELY_DATA_DIR", from_env.to_str().unwrap())],
    );
    let log = daemon.log_text();
    let warning = format!(
        "data_dir: ONCELY_DATA_DIR={} (environment) overrides data_dir = {} in {}",
        from_env.display(),
        from_file.display(),
        config.display()
    );
    assert!(log.contains(&warning), "no {warning:?} in\n{log}");
    assert!(log.contains("WARN"), "{log}");
    assert!(from_env.join("rocksdb").exists() && !from_file.exists());
}

#[test]
fn the_systemd_unit_leaves_file_settings_to_the_file() {
    let unit = include_str!("../../deploy/oncelyd.service");
    // Anything but the file's own path, set in the unit, would silently override
    // the file (the environment wins over the file).
    for line in unit.lines().filter(|l| l.starts_with("Environment=")) {
        let var = line["Environment=".len()..].split('=').next().unwrap();
        if let Some(s) = oncelyd::config::SETTINGS.iter().find(|s| s.env == var) {
            assert!(
                !s.in_file,
                "the unit sets {var}, which overrides {} in the file",
                s.key
            );
        }
    }
    assert!(unit.contains("Environment=ONCELY_CONFIG="), "{unit}");
    // The default data directory, ./data, must land in the state directory.
    assert!(unit.contains("WorkingDirectory=/var/lib/oncely"), "{unit}");
    assert!(unit.contains("StateDirectory=oncely"), "{unit}");
}

#[test]
fn a_network_listener_without_tokens_is_warned_about() {
    // 192.0.2.1 (TEST-NET-1) is never this machine's: the bind fails after the
    // warning, and nothing listens on the network.
    let warning = "not a loopback address, with no tokens";
    let run = |extra: &[&str]| {
        let mut args = vec!["--listen", "192.0.2.1:7070", "--durability", "memory"];
        args.extend_from_slice(extra);
        run_to_exit(command(&args, &[]), Duration::from_secs(30))
    };
    let (status, stderr) = run(&[]);
    assert!(!status.success());
    assert!(stderr.contains(warning), "{stderr}");
    assert!(
        stderr.contains("cannot listen on 192.0.2.1:7070"),
        "{stderr}"
    );
    let (_, stderr) = run(&["--token", TOKEN_A]);
    assert!(!stderr.contains(warning), "{stderr}");
}

#[test]
fn bad_settings_stop_start_up_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let bad_file = file("bad.toml", "max_idz = 3\n");
    let bad_ns = file(
        "bad-ns.toml",
        &table("orders", 4, 1000).replace("0.001", "1.5"),
    );
    let partial_ns = file("partial-ns.toml", "[namespaces.orders]\ngenerations = 6\n");
    let dot_ns = file("dot-ns.toml", &table("\"..\"", 4, 1000));
    let tiny_memtables = file("memtables.toml", "memtable_bytes = 64\n");
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (vec!["--max-ids", "0"], vec![], "max_ids"),
        // Absurd sizes and counts: refused, naming the setting and its limit (they
        // used to start silently).
        (
            vec!["--max-body-bytes", "64GiB"],
            vec![],
            "invalid setting max_body_bytes: 64GiB is over the limit of 1GiB",
        ),
        (
            vec!["--max-ids", "1000000000000"],
            vec![],
            "invalid setting max_ids: 1000000000000 is over the limit of 1000000",
        ),
        (
            vec![],
            vec![("ONCELY_MAX_BODY_BYTES_IN_FLIGHT", "1MiB")],
            "invalid setting max_body_bytes_in_flight: 1MiB is under max_body_bytes (4MiB)",
        ),
        (
            vec!["--max-filter-bytes", "2000GiB"],
            vec![],
            "invalid setting max_filter_bytes: 2000GiB is over the limit of 1024GiB",
        ),
        (
            vec!["--max-namespaces", "4000000000"],
            vec![],
            "invalid setting max_namespaces",
        ),
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
        (vec!["--drain-delay", "2h"], vec![], "drain_delay"),
        (
            vec![],
            vec![("ONCELY_WORKER_THREADS", "0")],
            "worker_threads",
        ),
        (vec!["--config", &bad_file], vec![], "max_idz"),
        (vec!["--config", &bad_ns], vec![], "fp_rate"),
        (
            vec!["--config", "/nonexistent/oncely.toml"],
            vec![],
            "/nonexistent/oncely.toml",
        ),
        // Misspelt variables: named, with what they probably meant.
        (
            vec![],
            vec![("ONCELY_MAX_ID", "5")],
            "ONCELY_MAX_ID (did you mean ONCELY_MAX_IDS?)",
        ),
        (
            vec![],
            vec![("ONCELY_TOKNS", TOKEN_A)],
            "ONCELY_TOKNS (did you mean ONCELY_TOKENS?)",
        ),
        (vec![], vec![("ONCELY_TOKENS", "")], "token 1 is empty"),
        // A token is taken whole, never split into a one-character one.
        (
            vec!["--token", "x,correct-horse-battery"],
            vec![],
            "token 1 contains a comma",
        ),
        (vec!["--token", "short"], vec![], "at least 16"),
        (
            vec![],
            vec![("ONCELY_TOKENS", "x,correct-horse-battery")],
            "token 1 is 1 characters long",
        ),
        // 64 bytes meant as MiB: refused at once, not a start-up that hangs.
        (vec!["--config", &tiny_memtables], vec![], "memtable_bytes"),
        (vec!["--memtable-bytes", "64"], vec![], "64MiB"),
        (
            vec!["--config", &partial_ns],
            vec![],
            "[namespaces.orders] is missing generation_capacity, generation_span, fp_rate, \
             exact_generations",
        ),
        (vec!["--config", &dot_ns], vec![], "path segments"),
        (vec!["--allowed-origin", "*"], vec![], "allowed_origins"),
    ];
    for (args, envs, needle) in cases {
        let mut all = vec!["--listen", "127.0.0.1:0", "--data-dir", data];
        all.extend(&args);
        let (status, stderr) = run_to_exit(command(&all, &envs), Duration::from_secs(30));
        assert!(!status.success(), "{args:?} {envs:?} started");
        assert!(stderr.contains(needle), "{args:?} {envs:?}: {stderr}");
    }
    // Nothing was created for a refused start-up.
    assert!(!Path::new(data).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_tables_survive_restarts_and_drops_need_drop_now() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap().to_owned();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    // At a false-positive rate of one in a million: 550 fresh IDs checked against up
    // to four Bloom-only generations must all read `new`. (At the 0.001 of `table`,
    // 4 runs in 22 met a false positive among them.)
    let rare = |generations| table("orders", generations, 100).replace("0.001", "0.000001");
    let six = write("six.toml", &rare(6));
    let c = client();
    // 550 IDs, 100 per generation: six generations live.
    let ids: Vec<String> = (0..550).map(|i| format!("order-{i}")).collect();
    let mut daemon = Daemon::start_with(&["--data-dir", &data_arg, "--config", &six], &[]);
    let mark = daemon.url("/v1/namespaces/orders/check-and-mark");
    for chunk in ids.chunks(50) {
        let got = verdicts(&c, &mark, chunk).await;
        assert!(got.iter().all(|v| v == "new"), "{chunk:?}: {got:?}");
    }
    let v: Value = c
        .get(daemon.url("/v1/namespaces/orders"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["generations"].as_array().unwrap().len(), 6, "{v}");
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    drop(daemon);

    // A routine restart with the same file changes nothing.
    let mut daemon = Daemon::start_with(&["--data-dir", &data_arg, "--config", &six], &[]);
    assert!(
        daemon.log_text().contains("namespace unchanged"),
        "{}",
        daemon.log_text()
    );
    let check = daemon.url("/v1/namespaces/orders/check");
    let got = verdicts(&c, &check, &ids).await;
    let exact = got.iter().filter(|v| *v == "duplicate").count();
    let probable = got.iter().filter(|v| *v == "probable_duplicate").count();
    assert_eq!(
        exact + probable,
        ids.len(),
        "every ID is remembered: {got:?}"
    );
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    drop(daemon);

    // Four generations would drop two, with the IDs they remember: refused without
    // drop_now, naming the namespace and the loss, and nothing changes.
    let four = write("four.toml", &rare(4));
    let mut args = vec!["--listen", "127.0.0.1:0", "--data-dir", &data_arg];
    args.extend(["--config", four.as_str()]);
    let (status, stderr) = run_to_exit(command(&args, &[]), Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        stderr.contains(
            "[namespaces.orders] would forget remembered IDs at start-up: 2 generation(s)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("drop_now = true"), "{stderr}");
    let daemon = Daemon::start_with(&["--data-dir", &data_arg, "--config", &six], &[]);
    let check = daemon.url("/v1/namespaces/orders/check");
    let after = verdicts(&c, &check, &ids).await;
    assert!(
        after.iter().all(|v| v != "new"),
        "the refusal dropped nothing"
    );
    drop(daemon);

    // With drop_now = true it goes through: the oldest IDs are forgotten.
    let four_now = write("four-now.toml", &format!("{}drop_now = true\n", rare(4)));
    let daemon = Daemon::start_with(&["--data-dir", &data_arg, "--config", &four_now], &[]);
    let check = daemon.url("/v1/namespaces/orders/check");
    let got = verdicts(&c, &check, &ids).await;
    // The two oldest generations (IDs 0 to 199) are gone: their IDs are new again,
    // but for the odd false positive of the filters that remain.
    let forgotten = got[..200].iter().filter(|v| *v == "new").count();
    assert!(
        forgotten >= 190,
        "{forgotten} of the 200 oldest IDs are new"
    );
    assert!(
        got[200..].iter().all(|v| v != "new"),
        "the newer ones are remembered"
    );
    let v: Value = c
        .get(daemon.url("/v1/namespaces/orders"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["config"]["generations"], 4);
}

#[test]
fn listen_address_parsing() {
    let line = "2026-01-01T00:00:00Z  INFO oncelyd::server: oncelyd listening on \
                http://127.0.0.1:4242 listen=127.0.0.1:4242 data_dir=./data durability=flush";
    assert_eq!(listen_addr(line), Some("127.0.0.1:4242".parse().unwrap()));
    assert_eq!(listen_addr("no address here"), None);
}
