//! DNS: the packets the capture programs copy for the agent, the table of queries held in the
//! kernel until their answer, the lookups counted there, and the query identity both sides
//! compute.

mod counts;
mod event;
mod hash;
mod held;

pub use counts::*;
pub use event::*;
pub use hash::*;
pub use held::*;
