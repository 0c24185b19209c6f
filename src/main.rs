//! The `offload` command line: parse, load config, run.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::SUCCESS
}
