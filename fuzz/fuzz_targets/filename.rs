//! Filename sanitising: whatever a client sends, the name is safe in a key and a header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use offload::upload::sanitize_filename;

fuzz_target!(|raw: &str| {
    let name = sanitize_filename(raw);
    assert!(!name.is_empty());
    assert!(name.len() <= 255, "{} bytes", name.len());
    assert!(!name.contains(['/', '\\']), "{name:?}");
    assert!(!name.chars().any(char::is_control), "{name:?}");
    assert!(name != "." && name != "..", "{name:?}");
    assert!(!name.ends_with(['.', ' ']), "{name:?}");
    assert!(!name.starts_with(' '), "{name:?}");
    assert!(http::HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")).is_ok());
    assert_eq!(sanitize_filename(&name), name, "not idempotent");
});
