//! Empty on purpose: the programs are in the `triage-agent-ebpf` binary target (src/main.rs),
//! built for the BPF target by agent/build.rs. This library target lets the agent declare a
//! build-dependency on the crate so cargo rebuilds the object when the programs change.
#![no_std]
