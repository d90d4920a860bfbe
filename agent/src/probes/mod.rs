//! Kernel-facing parts that need no privileges and no eBPF toolchain: ring buffer record
//! decoding, tracefs formats and the BTF reader. Loading and reading the programs is in
//! [`crate::node::loader`] and [`crate::node::reader`].

pub mod btf;
pub mod decode;
pub mod tracefs;
