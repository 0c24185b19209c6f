//! The HTML path: never panics; with no asset in the store no byte changes; the output never
//! depends on how the body is chunked.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use offload::rewrite::ContentKind;
use offload_fuzz::{Everything, Layout, Nothing, chunks, rewrite};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Layout::parse(data) else {
        return;
    };
    let html = ContentKind::Html;
    let whole = rewrite(html, Arc::new(Everything), chunks(input.body, &[]));
    let split = rewrite(html, Arc::new(Everything), chunks(input.body, input.cuts));
    assert_eq!(whole, split, "output depends on chunking");
    let untouched = rewrite(html, Arc::new(Nothing), chunks(input.body, input.cuts));
    assert_eq!(untouched, input.body, "changed with nothing in the store");
});
