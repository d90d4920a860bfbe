//! triage-agent: a node agent that observes the Kubernetes failures that produce no Kubernetes
//! event (refused connections first; drops, DNS, OOM kills and CPU throttling next) with eBPF,
//! attributes them to pods, keeps bounded evidence, and serves it to the CLI over gRPC.
//!
//! Modules by concern, in the order data flows:
//! - [`kernel`]: what the running kernel says about itself (BTF, tracefs, clocks);
//! - [`probes`]: the programs, their hooks and layouts, the ring buffer reader, decoding;
//! - [`samplers`]: cgroupfs/procfs pollers that feed the same pipeline;
//! - [`attribute`]: kernel events -> occurrences about a pod (metadata, cgroups, IP history);
//! - [`evidence`]: the model (one occurrence shape, a detail per kind) and its names;
//! - [`store`]: aggregated, bounded, fair evidence; [`loss`]: every loss counter by name;
//! - [`api`]: the gRPC service and its conversions; [`cli`]: the client commands;
//! - `node`: the agent's wiring, `otlp`: export of evidence as OpenTelemetry logs (both need
//!   the `node-agent` feature).
//!
//! A new signal touches: its program (agent-ebpf) and event type (agent-ebpf/common), a
//! [`probes::PROGRAMS`] entry and offsets family, a [`probes::decode::RawEvent`] variant, its
//! attribution clues in [`attribute`], a [`evidence::Detail`] variant (key, merge, JSON fields),
//! its proto `oneof` arm and conversion in [`api::convert`], and its diagnosis in
//! [`cli::diagnose`]. Nothing else changes.

pub mod api;
pub mod app;
pub mod attribute;
pub mod cli;
pub mod dns;
#[cfg(feature = "node-agent")]
pub mod doctor;
pub mod evidence;
/// The fuzz targets' bodies (fuzz/fuzz_targets calls them; a test replays their seeds).
#[doc(hidden)]
pub mod fuzzing;
pub mod kernel;
pub mod loss;
#[cfg(feature = "node-agent")]
pub mod node;
#[cfg(feature = "node-agent")]
pub mod otlp;
#[cfg(feature = "cluster")]
pub mod policy;
pub mod probes;
pub mod samplers;
pub mod signals;
pub mod store;
