//! offload: a reverse proxy that lets a fleet of web servers share uploaded and generated assets
//! through S3-compatible object storage, with no change to the application behind it.
//!
//! The four ways through the proxy (pass-through, upload routes, response rewriting, asset
//! requests) are wired together in `server`; each concern lives in its own module.

pub mod admin;
pub mod assets;
pub mod body;
pub mod config;
pub mod demo;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod ops;
mod pem;
pub mod proxy;
pub mod rewrite;
pub mod server;
pub mod store;
pub mod upload;
pub mod worker;
