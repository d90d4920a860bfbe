//! placeholder
pub mod apiserver;
