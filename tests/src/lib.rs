//! Test support for triage-agent: the simulated node (network namespaces, kubelet-style
//! cgroups, real processes), the stand-in API server it publishes its pods to, and a harness
//! that runs the real agent binary and CLI against it, and the fixture that makes a node and
//! its agent for a test. Used by the privileged end-to-end tests in tests/, by
//! `cargo xtask demo` and by the kernel matrix's `vm-check`.
#![expect(
    clippy::indexing_slicing,
    reason = "pod indexes are handed out by SimNode itself"
)]

pub mod agent;
pub mod apiserver;
pub mod bpf_maps;
pub mod caps;
pub mod fixture;
pub mod matrix;
pub mod simnode;
