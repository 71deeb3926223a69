//! The fixture itself: a server starts, takes a connection, and is gone after drop.

use std::process::Command;

use oncely_testkit::PgServer;

fn psql(url: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args([url, "-XAtc", sql])
        .output()
        .expect("psql runs")
}

#[test]
fn a_throwaway_server_starts_serves_and_stops() {
    let pg = PgServer::start();
    let url = pg.fresh_database();
    let out = psql(&url, "SELECT 40 + 2");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "42",
        "{}",
        pg.log()
    );
    let port = pg.port();
    drop(pg);
    let out = psql(
        &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        "SELECT 1",
    );
    assert!(!out.status.success(), "the server is gone");
}
