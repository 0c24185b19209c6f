//! Streams one file into an S3-compatible store through offload's store layer and prints the
//! throughput; `scripts/bench/store.sh` runs it beside the AWS CLI.
//!
//! ```text
//! store_put ENDPOINT BUCKET KEY FILE [PART_SIZE_MIB] [PARTS_IN_FLIGHT]
//! ```
//! Credentials come from the standard AWS chain (`AWS_ACCESS_KEY_ID`, …).

use std::time::Instant;

use anyhow::{Context, bail};
use bytesize::ByteSize;
use offload::config::{StoreConfig, StoreKind};
use offload::store::{PutOptions, S3Store, Store};

/// Read size from the file: large enough that the file system is not the bottleneck.
const READ_CHUNK: usize = 256 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, bucket, key, file, rest @ ..] = args.as_slice() else {
        bail!("usage: store_put ENDPOINT BUCKET KEY FILE [PART_SIZE_MIB] [PARTS_IN_FLIGHT]");
    };
    let defaults = StoreConfig::default();
    let part_mib: u64 = match rest.first() {
        Some(n) => n.parse().context("PART_SIZE_MIB")?,
        None => defaults.part_size.as_u64() / (1024 * 1024),
    };
    let in_flight: usize = match rest.get(1) {
        Some(n) => n.parse().context("PARTS_IN_FLIGHT")?,
        None => defaults.parts_in_flight,
    };
    let cfg = StoreConfig {
        kind: StoreKind::S3,
        bucket: bucket.clone(),
        endpoint: Some(endpoint.parse().context("ENDPOINT")?),
        path_style: true,
        part_size: ByteSize::mib(part_mib),
        parts_in_flight: in_flight,
        ..defaults
    };
    let store = S3Store::new(&cfg).await?;
    let reader = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {file}"))?;
    let body = tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK);
    let started = Instant::now();
    let info = store
        .put(key, Box::pin(body), PutOptions::default())
        .await
        .context("put")?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "offload: {} bytes in {seconds:.2} s = {:.1} MiB/s (part {part_mib} MiB x {in_flight}, sha256 {})",
        info.size,
        info.size as f64 / seconds / 1048576.0,
        info.sha256.unwrap_or_default()
    );
    Ok(())
}
