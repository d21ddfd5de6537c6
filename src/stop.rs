//! Stop requests: how a shutdown (SIGTERM, Ctrl-C) reaches every run, worker and CRM call
//! that should end at its next safe point.

use std::future::Future;

use tokio::sync::watch;

/// Asks runs to stop at their next checkpoint (shutdown); cheap to clone.
#[derive(Debug, Clone)]
pub struct StopSignal(watch::Receiver<bool>);

/// The sending side of a [`StopSignal`].
#[derive(Debug)]
pub struct StopHandle(watch::Sender<bool>);

impl StopSignal {
    /// A pair: stop through the handle, runs watch the signal.
    pub fn new() -> (StopHandle, StopSignal) {
        let (sender, receiver) = watch::channel(false);
        (StopHandle(sender), StopSignal(receiver))
    }

    /// A signal that never fires, for single runs that are not interrupted.
    pub fn never() -> StopSignal {
        StopSignal::new().1
    }

    /// Whether a stop was asked for.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once a stop is asked for.
    pub async fn stopped(&mut self) {
        // An error means the handle is gone: nobody can ask any more, so never resolve.
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Runs `work` to its end, or drops it when a stop is asked for first (`None`); work not
    /// yet started when the stop came is never started.
    pub async fn unless_stopped<F: Future>(&self, work: F) -> Option<F::Output> {
        let mut signal = self.clone();
        tokio::select! {
            biased;
            () = signal.stopped() => None,
            output = work => Some(output),
        }
    }
}

impl StopHandle {
    /// Asks every run watching the signal to stop at its next checkpoint.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}
