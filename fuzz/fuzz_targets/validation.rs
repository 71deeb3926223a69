//! Validation of event IDs, namespace names and namespace configurations: arbitrary
//! input is accepted or refused by the documented rules, without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oncely::{EventId, MAX_ID_LEN, MAX_NAMESPACE_LEN, NamespaceConfig, NamespaceName};

fuzz_target!(|data: &[u8]| {
    let id_ok = EventId::new(data).is_ok();
    assert_eq!(id_ok, !data.is_empty() && data.len() <= MAX_ID_LEN);

    let text = String::from_utf8_lossy(data);
    let name_ok = NamespaceName::new(text.as_ref()).is_ok();
    let rule = !text.is_empty()
        && text.len() <= MAX_NAMESPACE_LEN
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        // Path segments, which a name in a URL must not be.
        && text != "."
        && text != "..";
    assert_eq!(name_ok, rule, "{text:?}");

    if let Ok(config) = serde_json::from_slice::<NamespaceConfig>(data) {
        // A configuration that validates can size its filters and state its window.
        let sizing = config.filter_sizing();
        assert!(sizing.bits > 0 && sizing.hashes > 0);
        let _ = config.remembers_at_least();
    }
});
