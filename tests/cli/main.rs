//! Black-box tests of the `spillway` binary: real processes on generated or hand-written data,
//! expected answers computed independently of the code under test.

mod alerts;
mod cloud;
mod cluster;
mod common;
mod errors;
mod excel;
mod gen;
mod incremental;
mod inspect;
mod memory;
mod output;
mod paths;
mod pipe;
mod privacy;
mod query;
mod reports;
mod s3;
mod schedule;
mod schema;
mod serve;
mod serve_python;
mod shell;
