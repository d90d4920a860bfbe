//! triage-agent: a node agent that observes the Kubernetes failures that produce no Kubernetes
//! event (refused connections first; drops, DNS, OOM kills and CPU throttling next) with eBPF,
//! attributes them to pods, keeps bounded evidence, and serves it to the CLI over gRPC.
//!
//! Modules by stage, in the order data flows (docs/architecture.md; agent/tests/layers.rs
//! checks that no module imports a later stage and no two files import each other):
//! - [`kernel`]: what the running kernel says about itself (BTF, tracefs, clocks); [`text`]:
//!   text for people (times, sizes, escaped names);
//! - [`evidence`]: the model (one occurrence shape, a detail per kind) and its names; each
//!   kind's module holds its text cell, diagnosis, severity and wire codec;
//! - [`loss`]: every loss counter by name;
//! - [`cgroup`]: cgroup paths, ids and hierarchies; [`codec`]: Evidence <-> protobuf;
//!   [`diagnose`]: what is wrong and the safest next step;
//! - [`event`]: what producers hand to attribution;
//! - [`probes`], [`samplers`], [`dns`]: the producers; [`signals`]: each signal's mode;
//! - [`attribute`]: events -> occurrences about a pod (metadata, cgroups, IP history);
//! - [`store`]: aggregated, bounded, fair evidence;
//! - [`api`]: the gRPC service; `otlp`: export as OpenTelemetry logs; [`cli`]: the client
//!   commands; `metrics`, `doctor`, `supervisor`, `node` (these need the `node-agent`
//!   feature) and [`app`]: the wiring.
//!
//! A new signal touches: its program (agent-ebpf) and event type (agent-ebpf/common), a
//! [`probes::PROGRAMS`] entry (with the signals it serves) and offsets family, a
//! [`event::RawEvent`] variant decoded in `probes`, its arm in [`attribute`], and its kind: a
//! [`evidence::Kind`] name, a [`evidence::Detail`] variant, its line in the kinds table and one
//! module in `evidence/kinds/` implementing [`evidence::KindDetail`] (key, merge, JSON fields,
//! text cell, diagnosis, OpenTelemetry severity and attributes, NetworkPolicy, wire codec; the
//! compiler names every method left), with its message in the proto's `oneof`.
//! docs/architecture.md has the recipe.

pub mod api;
pub mod app;
pub mod attribute;
pub mod cgroup;
pub mod cli;
pub mod codec;
pub mod diagnose;
pub mod dns;
#[cfg(feature = "node-agent")]
pub mod doctor;
pub mod event;
pub mod evidence;
/// The fuzz targets' bodies (fuzz/fuzz_targets calls them; a test replays their seeds).
#[doc(hidden)]
pub mod fuzzing;
pub mod kernel;
pub mod loss;
#[cfg(feature = "node-agent")]
pub mod metrics;
#[cfg(feature = "node-agent")]
pub mod node;
pub mod otlp;
#[cfg(feature = "cluster")]
pub mod policy;
pub mod probes;
pub mod samplers;
pub mod signals;
pub mod store;
#[cfg(feature = "node-agent")]
pub mod supervisor;
pub mod text;
