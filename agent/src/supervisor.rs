//! The agent's tasks, run so that one ending early stops the agent with a failure.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument as _, error, info_span};

/// Runs tasks so that one ending early stops the agent with a failure.
pub struct Supervisor {
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
    pub failed: Arc<AtomicBool>,
}

impl Supervisor {
    pub fn spawn<F, E>(&self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let cancel = self.cancel.clone();
        let failed = self.failed.clone();
        let task = tokio::spawn(task.instrument(info_span!("task", name)));
        self.tracker.spawn(async move {
            let outcome = task.await;
            if cancel.is_cancelled() && matches!(outcome, Ok(Ok(()))) {
                return;
            }
            match outcome {
                Ok(Ok(())) => error!(
                    task = name,
                    "task ended before shutdown; stopping the agent"
                ),
                Ok(Err(error)) => error!(task = name, %error, "task failed; stopping the agent"),
                Err(error) => error!(task = name, %error, "task panicked; stopping the agent"),
            }
            failed.store(true, Ordering::SeqCst);
            cancel.cancel();
        });
    }
}

impl Supervisor {
    /// Runs a producer: its consumer (attribution) stops after it at shutdown, but one that
    /// outlives the drain finds the consumer gone; after shutdown began that is its end, not a
    /// failure (what it could not hand over is counted by the producer).
    pub fn spawn_producer<F, E>(&self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + crate::event::ConsumerGone + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.spawn(name, async move {
            match task.await {
                Err(e) if e.consumer_gone() && cancel.is_cancelled() => Ok(()),
                other => other,
            }
        });
    }
}

/// A task that cannot fail on its own: it returns when cancelled or when its inputs close.
pub async fn infallible(task: impl Future<Output = ()>) -> Result<(), std::convert::Infallible> {
    task.await;
    Ok(())
}
