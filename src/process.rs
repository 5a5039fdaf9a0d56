//! The process itself, below every command: the global allocator that turns refused memory
//! into exit code 7 (`allocator`), the signals every long-running command stops on (`signal`),
//! and the memory the machine or cgroup grants (`memory`). Must not know about SQL or output.

pub(crate) mod allocator;
pub(crate) mod memory;
pub(crate) mod signal;
