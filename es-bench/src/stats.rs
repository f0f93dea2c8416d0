//! Running an operation from several tasks for a while, and what came of it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How one operation ended.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Outcome {
    /// Optimistic-concurrency conflicts met (and retried) on the way.
    pub(crate) conflicts: u64,
    /// The operation gave up (its retries ran out); not counted as done.
    pub(crate) failed: bool,
}

/// Latencies and counts of one side of a comparison.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stats {
    pub(crate) ops: u64,
    pub(crate) elapsed: Duration,
    pub(crate) latencies: Vec<Duration>,
    pub(crate) conflicts: u64,
    /// Operations that gave up.
    pub(crate) failed: u64,
    /// Units of work per op (events per op, for example), for throughput in
    /// those units.
    pub(crate) units_per_op: u64,
}

impl Stats {
    pub(crate) fn merge(&mut self, other: Stats) {
        self.ops += other.ops;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.conflicts += other.conflicts;
        self.failed += other.failed;
        self.units_per_op = other.units_per_op;
    }

    /// Successful operations per second.
    pub(crate) fn ops_per_sec(&self) -> f64 {
        (self.ops - self.failed) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// `None` for a workload timed as a whole (catch-up), not per operation.
    pub(crate) fn percentile(&self, p: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        Some(sorted[rank.min(sorted.len() - 1)])
    }
}

/// Runs `op` from `concurrency` tasks until `duration` has passed (or each
/// task has run `max_ops_per_task` times), timing each call.
pub(crate) async fn run_for<F, Fut>(
    duration: Duration,
    concurrency: usize,
    max_ops_per_task: u64,
    op: F,
) -> Stats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let (mut conflicts, mut failed) = (0, 0);
                let mut i = 0;
                while Instant::now() < deadline && i < max_ops_per_task {
                    let t = Instant::now();
                    let outcome = op(task, i).await;
                    latencies.push(t.elapsed());
                    conflicts += outcome.conflicts;
                    failed += u64::from(outcome.failed);
                    i += 1;
                }
                (latencies, conflicts, failed)
            })
        })
        .collect();
    let mut stats = Stats {
        units_per_op: 1,
        ..Stats::default()
    };
    for task in tasks {
        let (latencies, conflicts, failed) = task.await.expect("benchmark task panicked");
        stats.ops += latencies.len() as u64;
        stats.latencies.extend(latencies);
        stats.conflicts += conflicts;
        stats.failed += failed;
    }
    stats.elapsed = started.elapsed();
    stats
}
