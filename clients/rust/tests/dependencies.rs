//! The guard against drift: a consumer of this crate builds nothing of the server.

use std::collections::BTreeSet;
use std::process::Command;

/// The packages in `cargo tree -p oncely-client` (normal, build and dev edges, the
/// default features: what a consumer and this crate's own tests build).
fn tree() -> BTreeSet<String> {
    // The cargo running this test, and its working directory (this package's):
    // read at run time, as a binary built for another checkout may be reused.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "oncely-client",
            "--edges",
            "normal,build,dev",
            "--prefix",
            "none",
            "--format",
            "{p}",
            "--locked",
            "--offline",
        ])
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_client_depends_on_nothing_of_the_server() {
    let packages = tree();
    assert!(
        packages.contains("reqwest"),
        "the tree was read: {packages:?}"
    );
    assert!(
        packages.contains("rustls") && packages.contains("ring"),
        "https:// is rustls on ring: {packages:?}"
    );
    for banned in [
        "librocksdb-sys",
        "rocksdb",
        "axum",
        "oncely",
        "oncelyd",
        // Only the daemon's `openapi` feature builds it.
        "utoipa",
        // TLS is rustls with ring: no C library (aws-lc needs cmake, OpenSSL its
        // headers) is built for https://.
        "aws-lc-rs",
        "aws-lc-sys",
        "native-tls",
        "openssl-sys",
    ] {
        assert!(
            !packages.contains(banned),
            "oncely-client depends on {banned}: {packages:?}"
        );
    }
}
