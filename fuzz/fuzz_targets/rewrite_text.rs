//! The streaming scanner (CSS, JSON, XML, JavaScript, plain text): never panics; with no
//! asset in the store nothing changes; the output never depends on how the body is chunked.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use offload::rewrite::ContentKind;
use offload_fuzz::{Everything, Layout, Nothing, chunks, rewrite};

const KINDS: [ContentKind; 5] = [
    ContentKind::Css,
    ContentKind::Json,
    ContentKind::Xml,
    ContentKind::JavaScript,
    ContentKind::Text,
];

fuzz_target!(|data: &[u8]| {
    let Some(input) = Layout::parse(data) else {
        return;
    };
    let kind = KINDS[usize::from(input.variant) % KINDS.len()];
    let whole = rewrite(kind, Arc::new(Everything), chunks(input.body, &[]));
    let split = rewrite(kind, Arc::new(Everything), chunks(input.body, input.cuts));
    assert_eq!(whole, split, "output depends on chunking");
    let untouched = rewrite(kind, Arc::new(Nothing), chunks(input.body, input.cuts));
    assert_eq!(untouched, input.body, "changed with nothing in the store");
});
