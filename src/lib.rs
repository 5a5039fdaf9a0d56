//! Spillway: SQL over CSV, Parquet and NDJSON file globs far larger than memory, on Apache
//! DataFusion, under a hard memory ceiling, with results streamed out.
//!
//! Data flows one way (see DESIGN.md): `cli`/`config` → `engine` (the one SessionContext) →
//! `catalog` (tables from specs) → `storage` (locations, globs, object stores); results stream
//! from the engine into `output`, with `stats` and `progress` alongside. `query` is the path
//! every entry point uses to run SQL; `gen` makes deterministic test data. The engine plans
//! with Spillway's own rules where DataFusion 55 would not stay inside the memory limit
//! (`rewrite`, `group_topk`), replaces slow DataFusion accumulators with faster ones of the same
//! name and results (`aggregate`), decodes plain CSV with its own decoder (`csv_scan`), and
//! `allocator` turns memory the OS refuses into exit code 7.
//! `serve` answers PostgreSQL clients (BI dashboards) from the same engine and catalog.

pub mod aggregate;
pub mod allocator;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod csv_scan;
pub mod demo;
pub mod engine;
pub mod error;
pub mod gen;
pub mod group_keys;
pub mod group_topk;
pub mod output;
pub mod progress;
pub mod query;
pub mod report;
pub mod reporting;
pub mod rewrite;
pub mod schedule;
pub mod serve;
pub mod signal;
pub mod stats;
pub mod storage;
