//! Response rewriting: points URLs of managed assets at the store's public base.
//!
//! Every URL under a managed prefix (`/wp-content/uploads/` ...) in a text response is a
//! candidate, in every spelling a site emits: root-relative, absolute with one of the site's
//! origins (or the request's own), protocol-relative, JSON-escaped (`https:\/\/...`), and
//! percent-encoded. For each, an [`AssetMap`] decides whether the object is in the store (then
//! the URL is replaced by its public URL, keeping query and fragment) or not (it stays local).
//!
//! * [`Rules`] are built once per configuration: the prefix automaton and finders, origins.
//! * [`plan`] decides whether a response is rewritten, [`prepare_headers`] fixes its headers.
//! * A [`Rewriter`] per response rewrites headers ([`Rewriter::header`]) and streams the body
//!   ([`Rewriter::body`]), decoding and re-encoding gzip, deflate, br and zstd on the way.
//!
//! HTML goes through a streaming tokenizer of its own (see `html.rs` for why not lol_html): URL
//! attributes (`src`, `srcset`, `href`, `poster`, `data-src`,
//! lazy-loading variants, `style`, `og:image`/`twitter:image` metas) and the raw text of
//! `<style>`, `<noscript>`, JSON `<script>`s and, when enabled, inline JavaScript. Text nodes are
//! prose and never touched. Other kinds go through a streaming scanner with a bounded carry-over
//! (at most ~8 KiB), so the output does not depend on how the body is chunked and memory stays
//! flat however large the body.
//!
//! ```
//! use std::sync::Arc;
//! use offload::rewrite::{AssetMap, Rewriter, Rules};
//!
//! struct Everything;
//! impl AssetMap for Everything {
//!     fn public_url(&self, path: &str, url: &mut String) -> bool {
//!         url.push_str("https://cdn.example.com");
//!         url.push_str(path);
//!         true
//!     }
//! }
//!
//! let rules = Rules::new(
//!     vec!["/wp-content/uploads/".into()],
//!     vec!["https://example.com".parse()?],
//!     "https://cdn.example.com/".parse()?,
//! )?;
//! let rewriter = Rewriter::new(Arc::new(rules), None, Arc::new(Everything));
//! let location = http::HeaderValue::from_static("https://example.com/wp-content/uploads/a.jpg");
//! let new = rewriter.header(&http::header::LOCATION, &location);
//! assert_eq!(new.unwrap(), "https://cdn.example.com/wp-content/uploads/a.jpg");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod body;
mod encoding;
mod html;
mod plan;
mod rewriter;
mod rules;
mod scan;
#[cfg(test)]
mod tests;

pub use encoding::{SNIFF_BYTES, coding_fits};
pub use plan::{ContentKind, PlanOptions, plan, prepare_headers};
pub use rewriter::{AssetMap, RewriteError, Rewriter, collect_asset_paths};
pub use rules::{Rules, RulesError};
