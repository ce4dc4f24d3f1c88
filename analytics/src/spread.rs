//! Running independent pieces of a run (units, a partition's stats files) side by side.

use futures::StreamExt;
use futures::future::BoxFuture;

/// Runs `tasks` with up to `workers` at once and returns their results in the tasks'
/// order.
///
/// With one worker they run one after the other on the caller's task: glibc gives each
/// thread its own heap arena, so spreading them over the runtime's threads would make the
/// peak memory (the REPORT line's Max Memory Used) one task's per thread instead of one
/// task's. With more, each runs as a task of its own, so that a multi-threaded runtime
/// puts the CPU-bound ones on as many cores. A task that panicked panics here (a bug
/// should fail the run, not be mistaken for a result); one cancelled because the runtime
/// is shutting down is `None`.
pub(crate) async fn spread<T: Send + 'static>(
    tasks: Vec<BoxFuture<'static, T>>,
    workers: usize,
) -> Vec<Option<T>> {
    if workers <= 1 {
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            out.push(Some(task.await));
        }
        return out;
    }
    let mut joined = Vec::with_capacity(tasks.len());
    for task in tasks {
        // A loop, not a closure: a closure returning a future is higher-ranked, and rustc
        // then cannot prove the callers' futures `Send`.
        joined.push(async move {
            let mut task = AbortOnDrop(tokio::spawn(task));
            match (&mut task.0).await {
                Ok(result) => Some(result),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => None,
            }
        });
    }
    futures::stream::iter(joined)
        .buffered(workers)
        .collect()
        .await
}

/// A spawned task that is aborted when its handle is dropped: dropping a run (a test's
/// stand-in for a killed process, a caller's timeout) stops its tasks as a kill would,
/// instead of leaving them to finish detached.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures::FutureExt;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_keep_the_tasks_order_and_at_most_workers_run_at_once() {
        for workers in [1, 3] {
            let running = Arc::new(AtomicUsize::new(0));
            let most = Arc::new(AtomicUsize::new(0));
            let tasks = (0..8u64)
                .map(|i| {
                    let (running, most) = (running.clone(), most.clone());
                    async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        // Later tasks finish first.
                        tokio::time::sleep(Duration::from_millis(40 - 4 * i)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        i
                    }
                    .boxed()
                })
                .collect();
            let out = spread(tasks, workers).await;
            assert_eq!(out, (0..8).map(Some).collect::<Vec<_>>());
            assert_eq!(most.load(Ordering::SeqCst), workers);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_run_stops_its_spawned_tasks() {
        let finished = Arc::new(AtomicUsize::new(0));
        let tasks = (0..2)
            .map(|_| {
                let finished = finished.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    finished.fetch_add(1, Ordering::SeqCst);
                }
                .boxed()
            })
            .collect();
        let run = spread(tasks, 2);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), run)
                .await
                .is_err()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(finished.load(Ordering::SeqCst), 0);
    }
}
