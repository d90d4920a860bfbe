//! Types shared by the eBPF programs (agent-ebpf) and the node agent (agent/src/probes).
//!
//! Everything here is `#[repr(C)]`, `Copy`, made of fixed-size integers and arrays with explicit
//! padding, and has its size pinned by a `const` assertion so a layout change cannot slip by.
//! Discriminants travel as `u32`; userspace converts them with `TryFrom` and never transmutes
//! kernel bytes into an enum.
//!
//! One module per concern; every item is used from the crate root
//! (`triage_agent_common::FlowEvent`, `triage_agent_common::flow_flags`).
#![no_std]

mod connect;
mod dns;
mod event;
mod flow;
mod kernel;
mod maps;
mod offsets;
mod oom;
mod share;
#[cfg(feature = "user")]
mod user;

pub use connect::*;
pub use dns::*;
pub use event::*;
pub use flow::*;
pub use kernel::*;
pub use maps::*;
pub use offsets::*;
pub use oom::*;
pub use share::*;
