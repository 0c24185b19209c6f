//! End-to-end tests: one test binary, one module per area, shared helpers in `support`.
//! Everything runs against real servers over real sockets (an in-process S3 server for the
//! store), never mocks.

mod store;
mod support;
