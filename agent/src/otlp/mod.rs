//! Export of evidence as OpenTelemetry logs (OTLP over gRPC or HTTP) to any OpenTelemetry
//! Collector or OTLP receiver,
//! for fleets whose evidence outgrows per-node storage. Off unless an OTLP endpoint is set
//! (the standard `OTEL_EXPORTER_OTLP_*` variables, [`config`]).
//!
//! ```text
//! store --subscription (WATCH_BUFFER)--> drain --try_send--> queue (bounded) --> batcher --> LogsService.Export or POST /v1/logs
//!                                          |                   full: otlp_queue_full          retries with backoff;
//!                                          lagged: otlp_lagged, resubscribe                    otlp_export_failed, otlp_rejected
//! ```
//! The drain only moves updates from the store's subscription into the exporter's own queue
//! (never awaiting it), so neither the store nor the pipeline before it ever waits for the
//! collector; a slow or absent collector fills the queue and every update it cannot hold is
//! counted. The batcher keeps the latest update of each record in a batch. [`record`] maps a
//! record to a log record; [`export`] runs the task.

pub mod config;
// The exporter needs the node agent's TLS and gzip; the settings and the mapping build
// without it (the fuzz targets read the settings).
#[cfg(feature = "node-agent")]
pub mod export;
#[cfg(feature = "node-agent")]
pub mod http;
pub mod record;

pub use config::{ConfigError, OtlpConfig};
#[cfg(feature = "node-agent")]
pub use export::{ExportStats, spawn};
