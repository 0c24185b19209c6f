//! End-to-end tests through real sockets on 127.0.0.1: one binary, one module per area.

mod support;

mod admin;
mod cli;
mod proxy;
mod server;
