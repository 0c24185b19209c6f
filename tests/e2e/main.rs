//! End-to-end tests through real sockets on 127.0.0.1: one binary, one module per area,
//! shared helpers in `support`. Everything runs against real servers (an in-process S3
//! server for the store, real apps), never mocks.

mod support;

mod admin;
mod assets;
mod cli;
mod faults;
mod framing;
mod joomla;
mod logs;
mod ops;
mod proxy;
mod rewriting;
mod security;
mod server;
mod store;
mod upload;
mod wordpress;
