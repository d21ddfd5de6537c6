//! Splitting one request's record work over the machine's cores.
//!
//! A client pages sequentially: while the emulator builds a page, the client waits, so the
//! other cores are idle. Records are pure functions of (funnel, number, instant), so a page's
//! numbers can be cut into contiguous runs, each built and rendered on its own thread, and
//! the results joined in order: the answer is the same bytes as one thread would write.

use std::sync::OnceLock;

/// Runs shorter than this stay on the calling thread: starting a thread costs tens of
/// microseconds, about what a few records cost to build.
const MIN_RUN: usize = 16;
/// More threads than this gain nothing for one page and crowd other requests out.
const MAX_THREADS: usize = 4;

fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_THREADS)
    })
}

/// `work` applied to contiguous runs of `items` covering all of them, in order, the runs
/// after the first on scoped threads. One run (on this thread) when `items` is short.
pub(crate) fn map_runs<T, R, F>(items: &[T], work: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&[T]) -> R + Sync,
{
    let runs = threads().min(items.len() / MIN_RUN).max(1);
    if runs == 1 {
        return vec![work(items)];
    }
    let size = items.len().div_ceil(runs);
    let mut chunks = items.chunks(size);
    let first = chunks.next().unwrap_or_default();
    std::thread::scope(|scope| {
        let work = &work;
        let others: Vec<_> = chunks
            .map(|chunk| scope.spawn(move || work(chunk)))
            .collect();
        let mut results = Vec::with_capacity(runs);
        results.push(work(first));
        for handle in others {
            match handle.join() {
                Ok(result) => results.push(result),
                // A panicking run panics the request, as it would have on one thread.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        results
    })
}
