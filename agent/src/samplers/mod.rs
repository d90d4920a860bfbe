//! Samplers: evidence that comes from polling cgroupfs and procfs rather than from eBPF (CPU
//! throttling counters, OOM kill counters as the source of truth and the fallback when eBPF is
//! unavailable). A sampler runs as its own task, reads files on a tick, and sends decoded
//! [`crate::attribute::TimedEvent`]s into the same attribution channel as the ring buffer
//! reader ([`crate::attribute::AttributeInputs::events`]), with `try_send` and a counted loss
//! when it is full, exactly like the reader. No sampler ships yet.
