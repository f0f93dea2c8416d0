//! `growth`: what an append, a command and a load cost once the store
//! holds millions of events, against the same operations on a nearly empty
//! store, and the catch-up over all of them.
//!
//! The operations measured at both sizes, each from one task:
//! - an append of one event to a new aggregate (`NoStream`): its keys land
//!   at random places of the aggregate indexes, the worst case for a big
//!   index, whose pages are then mostly not in the server's cache;
//! - a command on one of 1,000 existing accounts (load, fold, handle,
//!   append one event with `Exact`), as `append_c1` runs it;
//! - a load of one of 100 aggregates of 100 events.
//!
//! Aggregate ids are random UUIDs, so the probes' keys are spread among
//! the filler's, not gathered at one end of the indexes. The filler is
//! aggregates of 100 events appended through the store, ten appends per
//! transaction, from two tasks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use es::store::{EventStore, ExpectedVersion};
use es::{Repository, RetryPolicy};

use crate::backend::Target;
use crate::domain::Account;
use crate::stats::{Outcome, Stats, run_for};
use crate::{Bench, account_events, conn, deposit};

/// Events per filler aggregate and per probe aggregate that is loaded.
const STREAM: usize = 100;
/// Accounts the commands run on.
const ACCOUNTS: usize = 1000;
/// Aggregates of [`STREAM`] events the loads pick from.
const LOADED: usize = 100;
/// Store appends per filler transaction.
const APPENDS_PER_TX: usize = 10;
/// Filler tasks.
const FILLERS: usize = 2;

/// One operation measured at both sizes.
pub(crate) struct Growth {
    /// What was measured.
    pub(crate) measure: &'static str,
    pub(crate) empty: Stats,
    pub(crate) grown: Stats,
}

impl Growth {
    /// Mean latency at the grown size ÷ at the empty one (one task, so
    /// the inverse of the throughputs' ratio).
    pub(crate) fn factor(&self) -> f64 {
        self.empty.ops_per_sec() / self.grown.ops_per_sec().max(1e-9)
    }
}

/// The ids of the probes, made once so that both sizes run on the same.
struct Probes {
    accounts: Vec<String>,
    loaded: Vec<String>,
}

fn random_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl<T: Target> Bench<T> {
    /// Runs the growth workload to `events` stored events. Returns the
    /// measured operations and the catch-up comparisons over the grown
    /// store.
    pub(crate) async fn growth(
        &self,
        events: u64,
    ) -> (Vec<Growth>, Vec<crate::Comparison>, Duration) {
        let probes = Probes {
            accounts: (0..ACCOUNTS).map(|_| random_id()).collect(),
            loaded: (0..LOADED).map(|_| random_id()).collect(),
        };
        let mut c = conn::<T>(&self.pool).await;
        for id in &probes.accounts {
            self.store
                .append(&mut c, ExpectedVersion::NoStream, account_events(id, 4))
                .await
                .expect("populate");
        }
        for id in &probes.loaded {
            self.store
                .append(
                    &mut c,
                    ExpectedVersion::NoStream,
                    account_events(id, STREAM - 1),
                )
                .await
                .expect("populate");
        }
        drop(c);
        let probes = Arc::new(probes);
        let empty = self.growth_probes(&probes).await;
        let stored = self.plain.count_events().await.max(0) as u64;
        let fill = self.fill(events.saturating_sub(stored)).await;
        let grown = self.growth_probes(&probes).await;
        let measured = empty
            .into_iter()
            .zip(grown)
            .map(|((measure, empty), (_, grown))| Growth {
                measure,
                empty,
                grown,
            })
            .collect();
        let total = self.plain.count_events().await;
        let catchup = self
            .catch_up_over(total, &format!("growth_catchup_{}", crate::count(total)))
            .await;
        (measured, catchup, fill)
    }

    /// The three operations, each for a side's duration.
    async fn growth_probes(&self, probes: &Arc<Probes>) -> Vec<(&'static str, Stats)> {
        let mut measured = Vec::new();
        // new aggregates: ids made outside the timed call
        let (store, pool) = (self.store.clone(), self.pool.clone());
        measured.push((
            "append_new_aggregate",
            run_for(self.side_duration, 1, u64::MAX, move |_, _| {
                let (store, pool) = (store.clone(), pool.clone());
                let events = account_events(&random_id(), 0);
                async move {
                    let mut c = conn::<T>(&pool).await;
                    store
                        .append(&mut c, ExpectedVersion::NoStream, events)
                        .await
                        .expect("append");
                    Outcome::default()
                }
            })
            .await,
        ));
        let repository = Arc::new(
            Repository::<Account, T::Store>::new(self.store.clone(), self.pool.clone())
                .with_retry_policy(RetryPolicy::none()),
        );
        let (r, p) = (repository.clone(), probes.clone());
        measured.push((
            "command_existing",
            run_for(self.side_duration, 1, u64::MAX, move |_, i| {
                let (repository, probes) = (r.clone(), p.clone());
                async move {
                    let id = &probes.accounts[i as usize % ACCOUNTS];
                    repository.execute(id, &deposit()).await.expect("execute");
                    Outcome::default()
                }
            })
            .await,
        ));
        let (r, p) = (repository, probes.clone());
        measured.push((
            "load_100",
            run_for(self.side_duration, 1, u64::MAX, move |_, i| {
                let (repository, probes) = (r.clone(), p.clone());
                async move {
                    // a stride coprime with 100 visits every aggregate
                    let id = &probes.loaded[(i as usize * 37) % LOADED];
                    let loaded = repository.load(id).await.expect("load");
                    assert_eq!(loaded.version, STREAM as i64);
                    Outcome::default()
                }
            })
            .await,
        ));
        measured
    }

    /// Appends `events` more events (rounded up to whole filler
    /// aggregates) through the store; returns how long it took.
    async fn fill(&self, events: u64) -> Duration {
        let aggregates = events.div_ceil(STREAM as u64) as usize;
        let started = Instant::now();
        let tasks: Vec<_> = (0..FILLERS)
            .map(|task| {
                let (store, pool) = (self.store.clone(), self.pool.clone());
                let mine = (aggregates + FILLERS - 1 - task) / FILLERS;
                tokio::spawn(async move {
                    let mut done = 0;
                    while done < mine {
                        let mut tx = pool.begin().await.expect("begin");
                        for _ in 0..APPENDS_PER_TX.min(mine - done) {
                            store
                                .append(
                                    &mut *tx,
                                    ExpectedVersion::NoStream,
                                    account_events(&random_id(), STREAM - 1),
                                )
                                .await
                                .expect("fill");
                            done += 1;
                        }
                        tx.commit().await.expect("commit");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("filler panicked");
        }
        let elapsed = started.elapsed();
        eprintln!(
            "  stored {} events in {:.1} s ({:.0} events/s)",
            aggregates * STREAM,
            elapsed.as_secs_f64(),
            (aggregates * STREAM) as f64 / elapsed.as_secs_f64()
        );
        elapsed
    }
}

/// Prints one measured operation: both sizes and the growth factor (a
/// JSON line with `--json`, the table line then going to stderr).
pub(crate) fn report(backend: &str, g: &Growth, events: u64, fill: Duration, json: bool) {
    let side = |s: &Stats| {
        format!(
            "{:>9.1} ops/s  p50 {}  p99 {}",
            s.ops_per_sec(),
            crate::column(s.percentile(50.0)),
            crate::column(s.percentile(99.0)),
        )
    };
    let line = format!(
        "growth {:<22} empty {} | at {} events {} | {:.2}x the empty store's mean latency",
        g.measure,
        side(&g.empty),
        crate::count(events as i64),
        side(&g.grown),
        g.factor(),
    );
    if json {
        eprintln!("{line}");
        let side = |s: &Stats| {
            serde_json::json!({
                "ops": s.ops,
                "ops_per_sec": s.ops_per_sec(),
                "p50_ms": crate::ms(s.percentile(50.0)),
                "p99_ms": crate::ms(s.percentile(99.0)),
            })
        };
        println!(
            "{}",
            serde_json::json!({
                "backend": backend,
                "workload": "growth",
                "measure": g.measure,
                "events": events,
                "fill_seconds": fill.as_secs_f64(),
                "empty": side(&g.empty),
                "grown": side(&g.grown),
                "growth": g.factor(),
            })
        );
    } else {
        println!("{line}");
    }
}
