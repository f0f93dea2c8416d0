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
//!
//! The empty store is a second store (its own schema, database or file)
//! holding only the probes' aggregates, measured after the fill in
//! alternating rounds with the grown one, so that both see the same
//! machine: drift (other work, the disk's flush time) does not count as
//! growth. The growth is the ratio of the median latencies (and, for
//! information, of the means).

use std::sync::Arc;
use std::time::{Duration, Instant};

use es::store::{EventStore, ExpectedVersion};
use es::{Repository, RetryPolicy};

use crate::backend::{Opened, Pool, Target};
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

/// Rounds of the alternation between the empty and the grown store.
const ROUNDS: u32 = 4;

/// The operations, in the order [`growth_probes`] runs them.
const MEASURES: [&str; 3] = ["append_new_aggregate", "command_existing", "load_100"];

/// One operation measured at both sizes.
pub(crate) struct Growth {
    /// What was measured.
    pub(crate) measure: &'static str,
    pub(crate) empty: Stats,
    pub(crate) grown: Stats,
}

impl Growth {
    /// Median latency at the grown size ÷ at the empty one.
    pub(crate) fn factor(&self) -> f64 {
        let p50 = |s: &Stats| s.percentile(50.0).unwrap_or_default().as_secs_f64();
        p50(&self.grown) / p50(&self.empty).max(1e-12)
    }

    /// Mean latency at the grown size ÷ at the empty one (one task: the
    /// inverse of the throughputs' ratio).
    pub(crate) fn mean_factor(&self) -> f64 {
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
        notify: bool,
    ) -> (Vec<Growth>, Vec<crate::Comparison>, Duration) {
        let probes = Arc::new(Probes {
            accounts: (0..ACCOUNTS).map(|_| random_id()).collect(),
            loaded: (0..LOADED).map(|_| random_id()).collect(),
        });
        let empty: Opened<T> = T::open(notify).await.expect("a second store");
        eprintln!("  the empty store: {}", empty.place);
        for (store, pool) in [(&self.store, &self.pool), (&empty.store, &empty.pool)] {
            populate::<T>(store, pool, &probes).await;
        }
        let stored = self.plain.count_events().await.max(0) as u64;
        let fill = self.fill(events.saturating_sub(stored)).await;
        let mut measured: Vec<Growth> = MEASURES
            .iter()
            .map(|&measure| Growth {
                measure,
                empty: Stats::default(),
                grown: Stats::default(),
            })
            .collect();
        let round = self.side_duration / ROUNDS;
        for _ in 0..ROUNDS {
            let sides = [
                (&empty.store, &empty.pool, true),
                (&self.store, &self.pool, false),
            ];
            for (store, pool, is_empty) in sides {
                let stats = growth_probes::<T>(store, pool, &probes, round).await;
                for (growth, stats) in measured.iter_mut().zip(stats) {
                    if is_empty {
                        growth.empty.merge(stats);
                    } else {
                        growth.grown.merge(stats);
                    }
                }
            }
        }
        T::close(&empty).await;
        let total = self.plain.count_events().await;
        let catchup = self
            .catch_up_over(total, &format!("growth_catchup_{}", crate::count(total)))
            .await;
        (measured, catchup, fill)
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
                        let group = APPENDS_PER_TX.min(mine - done);
                        // Two fillers' transactions can deadlock on MySQL
                        // (each locks several new aggregates); the victim
                        // is rolled back whole and reported as a conflict:
                        // run the group again.
                        'group: loop {
                            let mut tx = pool.begin().await.expect("begin");
                            for _ in 0..group {
                                match store
                                    .append(
                                        &mut *tx,
                                        ExpectedVersion::NoStream,
                                        account_events(&random_id(), STREAM - 1),
                                    )
                                    .await
                                {
                                    Ok(_) => {}
                                    Err(es::store::Error::OptimisticConcurrency {
                                        actual: None,
                                        ..
                                    }) => continue 'group,
                                    Err(other) => panic!("fill: {other}"),
                                }
                            }
                            tx.commit().await.expect("commit");
                            break;
                        }
                        done += group;
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

/// The probes' aggregates, in one store.
async fn populate<T: Target>(store: &T::Store, pool: &Pool<T>, probes: &Probes) {
    let mut c = conn::<T>(pool).await;
    for id in &probes.accounts {
        store
            .append(&mut c, ExpectedVersion::NoStream, account_events(id, 4))
            .await
            .expect("populate");
    }
    for id in &probes.loaded {
        store
            .append(
                &mut c,
                ExpectedVersion::NoStream,
                account_events(id, STREAM - 1),
            )
            .await
            .expect("populate");
    }
}

/// The three operations of [`MEASURES`] on one store, each for `duration`.
async fn growth_probes<T: Target>(
    store: &T::Store,
    pool: &Pool<T>,
    probes: &Arc<Probes>,
    duration: Duration,
) -> Vec<Stats> {
    let mut measured = Vec::new();
    // new aggregates: ids made outside the timed call
    let (s, p) = (store.clone(), pool.clone());
    measured.push(
        run_for(duration, 1, u64::MAX, move |_, _| {
            let (store, pool) = (s.clone(), p.clone());
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
    );
    let repository = Arc::new(
        Repository::<Account, T::Store>::new(store.clone(), pool.clone())
            .with_retry_policy(RetryPolicy::none()),
    );
    let (r, p) = (repository.clone(), probes.clone());
    measured.push(
        run_for(duration, 1, u64::MAX, move |_, i| {
            let (repository, probes) = (r.clone(), p.clone());
            async move {
                let id = &probes.accounts[i as usize % ACCOUNTS];
                repository.execute(id, &deposit()).await.expect("execute");
                Outcome::default()
            }
        })
        .await,
    );
    let (r, p) = (repository, probes.clone());
    measured.push(
        run_for(duration, 1, u64::MAX, move |_, i| {
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
    );
    measured
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
        "growth {:<22} empty {} | at {} events {} | median latency {:.2}x the empty store's (mean {:.2}x)",
        g.measure,
        side(&g.empty),
        crate::count(events as i64),
        side(&g.grown),
        g.factor(),
        g.mean_factor(),
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
                "mean_growth": g.mean_factor(),
            })
        );
    } else {
        println!("{line}");
    }
}
