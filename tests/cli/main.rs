//! Black-box tests of the `spillway` binary: real processes on generated or hand-written data,
//! expected answers computed independently of the code under test.

mod common;
mod errors;
mod memory;
mod output;
mod paths;
mod query;
mod reports;
mod s3;
mod schedule;
mod serve;
mod serve_python;
