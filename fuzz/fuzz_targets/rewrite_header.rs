//! URL-valued headers (`Location`, `Link`, `Refresh`): never panic, always a valid value,
//! unchanged when nothing is in the store.
#![no_main]

use std::sync::Arc;

use http::{HeaderName, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use offload::rewrite::Rewriter;
use offload_fuzz::{Everything, Nothing, rules};

fuzz_target!(|input: (u8, Vec<u8>)| {
    let (which, value) = input;
    let names: [HeaderName; 4] = [
        header::LOCATION,
        header::CONTENT_LOCATION,
        header::LINK,
        header::REFRESH,
    ];
    let name = &names[usize::from(which) % names.len()];
    let Ok(value) = HeaderValue::from_bytes(&value) else {
        return;
    };
    let origin = "http://site.test".parse().ok();
    let everything = Rewriter::new(rules(), origin.clone(), Arc::new(Everything));
    let _ = everything.header(name, &value);
    let nothing = Rewriter::new(rules(), origin, Arc::new(Nothing));
    assert_eq!(nothing.header(name, &value), None);
});
