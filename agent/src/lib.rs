//! triage-agent: a node agent that observes the Kubernetes failures that produce no Kubernetes
//! event (refused connections first; drops, DNS, OOM kills and CPU throttling next) with eBPF,
//! attributes them to pods, keeps bounded evidence, and serves it to the CLI over gRPC.
//!
//! Modules by concern: [`probes`] (kernel bytes), [`attribute`] (pods), [`store`] (evidence),
//! [`api`] (gRPC service), [`cli`] (client commands), [`node`] (the agent's wiring; needs the
//! `node-agent` feature).

pub mod api;
pub mod app;
pub mod attribute;
pub mod cli;
pub mod convert;
pub mod counters;
pub mod evidence;
#[cfg(feature = "node-agent")]
pub mod node;
pub mod probes;
pub mod store;
