//! Stopping the daemon: one signal broadcast to every task, and a drain that waits until each
//! task has ended, as in mini-redis (`src/shutdown.rs`, `src/server.rs`).
//!
//! ```text
//! Trigger::trigger ──watch──▶ Shutdown (capture loop)   ──▶ captures what is pending, then
//!                                                           Trigger::trigger ──▶ Shutdown (seal, status, view)
//! each task holds a Drain; run waits until the last one is dropped, collecting what each task ended with
//! ```
//! The signal is a `tokio::sync::watch` of one `bool`: it is read without waiting by the blocking
//! capture loop (`is_shutdown`) and awaited by async tasks (`recv`); a task that subscribes late
//! still sees a signal given before.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

/// Gives the shutdown signal; cheap to clone (e.g. into a signal handler).
#[derive(Debug, Clone)]
pub struct Trigger {
    tx: Arc<watch::Sender<bool>>,
}

/// Hears the shutdown signal. Every task holds its own clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// A new signal, not given yet.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx: Arc::new(tx) }, Shutdown { rx })
}

impl Trigger {
    /// Gives the signal to every [`Shutdown`] of this channel; giving it again does nothing.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Another listener of this channel.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// Whether the signal was given (does not wait).
    pub fn is_shutdown(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits for the signal; returns at once if it was given before. A channel whose every
    /// [`Trigger`] is gone can no longer signal: that counts as a shutdown too.
    pub async fn recv(&mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}

/// How a task ended: its name (for messages) and its result.
pub(crate) type TaskEnd = (&'static str, crate::Result<()>);

/// Held by a task for its whole life; dropping it tells [`Drain::wait`] the task is done.
#[derive(Debug, Clone)]
pub(crate) struct Done {
    tx: mpsc::UnboundedSender<TaskEnd>,
}

impl Done {
    /// Reports how the task ended, and ends its hold on the drain.
    pub(crate) fn finish(self, name: &'static str, result: crate::Result<()>) {
        // The receiver lives as long as `run`; if it is gone nobody is waiting.
        let _ = self.tx.send((name, result));
    }
}

/// The receiving end: the tasks' outcomes, and the moment the last task is gone.
pub(crate) struct Drain {
    rx: mpsc::UnboundedReceiver<TaskEnd>,
}

/// A new drain and the first [`Done`] to clone into tasks.
pub(crate) fn drain() -> (Done, Drain) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Done { tx }, Drain { rx })
}

impl Drain {
    /// A task that already ended, without waiting.
    pub(crate) fn try_ended(&mut self) -> Option<TaskEnd> {
        self.rx.try_recv().ok()
    }

    /// Waits until every [`Done`] is dropped (the caller must have dropped its own) and returns
    /// every outcome not taken by [`Drain::try_ended`].
    pub(crate) async fn wait(mut self) -> Vec<TaskEnd> {
        let mut ended = Vec::new();
        while let Some(end) = self.rx.recv().await {
            ended.push(end);
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_task_hears_the_signal_and_the_drain_waits_for_all() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (trigger, shutdown) = channel();
            let (done, drain) = drain();
            for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
                let (mut shutdown, done) = (shutdown.clone(), done.clone());
                tokio::spawn(async move {
                    shutdown.recv().await;
                    // Slow to finish: the drain must still wait for it.
                    tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
                    done.finish(name, Ok(()));
                });
            }
            drop(done);
            assert!(!shutdown.is_shutdown());
            trigger.trigger();
            assert!(shutdown.is_shutdown());
            assert!(
                trigger.subscribe().is_shutdown(),
                "late listeners hear it too"
            );
            let mut names: Vec<_> = drain.wait().await.into_iter().map(|(n, _)| n).collect();
            names.sort_unstable();
            assert_eq!(names, ["a", "b", "c"]);
        });
    }
}
