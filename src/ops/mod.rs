//! Operations on a whole store, run from the command line rather than per request.
//!
//! - [`sync`]: bulk-offload an existing uploads folder (e.g. `wp-content/uploads`) to the keys
//!   the proxy computes for its URLs, in parallel, skipping what is already there, so an
//!   interrupted run simply resumes.
//! - [`backup`] / [`restore`]: incremental, checksum-verified copies of everything under the
//!   store's prefix to a folder or another bucket, and back, with metadata preserved and a
//!   manifest (`offload-manifest.json`) recording what the backup holds.
//!
//! Every byte copied is hashed on the way; a body whose SHA-256 differs from what the source
//! claims fails its `put`, so by the [`Store`](crate::store::Store) contract nothing corrupt
//! is ever visible in the target.

mod backup;
mod checked;
pub mod cli;
mod copy;
mod manifest;
mod progress;
mod restore;
mod sync;

pub use backup::{BackupOptions, backup};
pub use copy::{CopiedObject, CopyFailure, CopyReport};
pub use manifest::{MANIFEST_NAME, Manifest, ManifestEntry};
pub use restore::{RestoreOptions, restore};
pub use sync::{SyncFailure, SyncOptions, SyncReport, Tally, sync};
