//! End-to-end tests: one test binary, one module per area, shared helpers in `support`.
//! Everything runs against real servers over real sockets on 127.0.0.1 (an in-process S3
//! server for the store), never mocks.

mod support;

mod admin;
mod cli;
mod ops;
mod proxy;
mod server;
mod store;
