//! Counting received messages until a target, for one-way throughput.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

/// A request to report when `target` messages have arrived.
pub(super) struct CountJob {
    /// Messages to wait for.
    pub target: usize,
    /// Receives the instant the last one arrived.
    pub done: oneshot::Sender<Instant>,
}

/// Counts messages on the receiving side; the sender queues a [`CountJob`]
/// before it sends the first message of a run.
pub(super) struct Counter {
    jobs: mpsc::Receiver<CountJob>,
    job: Option<CountJob>,
    counted: usize,
}

impl Counter {
    /// A counter and the sender of its jobs.
    pub(super) fn new() -> (Self, mpsc::Sender<CountJob>) {
        let (tx, jobs) = mpsc::channel(4);
        let counter = Self {
            jobs,
            job: None,
            counted: 0,
        };
        (counter, tx)
    }

    /// Counts one message; completes the current job at its target.
    pub(super) fn count(&mut self) {
        self.counted += 1;
        if self.job.is_none() {
            self.job = self.jobs.try_recv().ok();
        }
        if self.job.as_ref().is_some_and(|j| self.counted >= j.target) {
            if let Some(job) = self.job.take() {
                let _ = job.done.send(Instant::now());
            }
            self.counted = 0;
        }
    }
}

/// Queues a job for `target` messages on `jobs` and returns where the
/// instant of the last arrival will be reported.
pub(super) async fn expect(
    jobs: &mpsc::Sender<CountJob>,
    target: usize,
) -> anyhow::Result<oneshot::Receiver<Instant>> {
    let (done, arrived) = oneshot::channel();
    jobs.send(CountJob { target, done })
        .await
        .map_err(|_| anyhow::anyhow!("the receiving side stopped"))?;
    Ok(arrived)
}

/// Waits for the instant reported through `done`, bounded by
/// [`REPLY_TIMEOUT`](super::swarm::REPLY_TIMEOUT).
pub(super) async fn finished(
    done: oneshot::Receiver<Instant>,
    what: &str,
) -> anyhow::Result<Instant> {
    match tokio::time::timeout(super::swarm::REPLY_TIMEOUT, done).await {
        Ok(Ok(at)) => Ok(at),
        Ok(Err(_)) => anyhow::bail!("the receiving side stopped before {what} arrived"),
        Err(_) => anyhow::bail!("timed out waiting for {what}"),
    }
}
