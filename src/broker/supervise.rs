//! Background loops that survive their own bugs: a panic in one pass is
//! logged and the loop started again, so retention, checkpoints or session
//! expiry never stop for good without a word (a full disk would follow).

use std::future::Future;

use crate::config::BACKGROUND_RESTART_DELAY as RESTART_DELAY;

/// Runs the task `make` builds until it returns; each time it panics, logs
/// it and starts a new one after [`RESTART_DELAY`].
pub fn spawn_supervised<F, Fut>(name: &'static str, mut make: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(make()).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    tracing::error!(task = name, "background task panicked; starting it again");
                    tokio::time::sleep(RESTART_DELAY).await;
                }
                Err(_) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_started_again_until_it_returns() {
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        let handle = spawn_supervised("test", move || {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("a bug in this pass");
                }
            }
        });
        handle.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3, "two panics, then a run that returned");
    }
}
