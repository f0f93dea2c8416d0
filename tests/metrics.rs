//! The metrics example's endpoint, scraped after real commands and a
//! projection on every backend: the counters say what the commands did.

mod support;

#[path = "../examples/bank/domain.rs"]
#[allow(dead_code)]
mod domain;
#[path = "../examples/metrics/telemetry.rs"]
mod telemetry;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use es::aggregate::testing::TestDatabase;
use es::store::Store;
use es::store::telemetry as names;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One scrape: every sample, by name and labels.
#[derive(Debug, Default)]
struct Scrape {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    /// The `# HELP` lines.
    help: String,
}

impl Scrape {
    /// The sum of the samples named `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|have| have == v))
            })
            .map(|(_, _, value)| value)
            .sum()
    }

    /// Whether any sample is named `name`.
    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }
}

/// Parses the Prometheus text format (the subset the exporter writes).
fn parse(text: &str) -> Scrape {
    let mut samples = Vec::new();
    let mut help = String::new();
    for line in text.lines() {
        if line.starts_with("# HELP") {
            help.push_str(line);
            help.push('\n');
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let value: f64 = value.parse().expect("a number");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let labels = body
                    .split("\",")
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, value) = pair.split_once("=\"").expect("key=\"value\"");
                        (key.to_owned(), value.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        samples.push((name, labels, value));
    }
    Scrape { samples, help }
}

/// `GET /metrics`, as Prometheus does it.
async fn scrape(addr: SocketAddr) -> Scrape {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\naccept: text/plain\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    parse(body)
}

const ACCOUNT: [(&str, &str); 2] = [
    ("bounded_context", "Billing"),
    ("aggregate_type", "Account"),
];

fn account_and(label: (&'static str, &'static str)) -> Vec<(&'static str, &'static str)> {
    let mut labels = ACCOUNT.to_vec();
    labels.push(label);
    labels
}

/// Runs the workload on `db` and checks what the endpoint says it did.
async fn counts_what_it_did<S: Store>(addr: SocketAddr, db: TestDatabase<S>) {
    let before = scrape(addr).await;
    let done = telemetry::workload(db.store().clone(), db.pool().clone())
        .await
        .unwrap();
    let after = scrape(addr).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        (after.sum(name, labels) - before.sum(name, labels)).round() as u64
    };
    let commands = names::COMMANDS;
    assert_eq!(
        delta(commands, &account_and(("outcome", "executed"))),
        done.executed
    );
    assert_eq!(delta(commands, &account_and(("outcome", "rejected"))), 2);
    assert_eq!(delta(commands, &account_and(("outcome", "conflict"))), 0);
    assert_eq!(
        delta(names::COMMAND_CONFLICTS, &ACCOUNT),
        done.conflicts_retried
    );
    assert_eq!(
        delta(names::COMMAND_RETRIES, &account_and(("reason", "conflict"))),
        done.conflicts_retried
    );
    assert!(
        done.conflicts_retried > 0,
        "eight tasks on one account conflict"
    );
    assert_eq!(delta(names::EVENTS_APPENDED, &ACCOUNT), done.events);
    // Every command that stored events made one successful append.
    let append_count = format!("{}_count", names::APPEND_DURATION);
    assert_eq!(
        delta(&append_count, &account_and(("outcome", "ok"))),
        done.executed
    );
    let command_count = format!("{}_count", names::COMMAND_DURATION);
    assert_eq!(
        delta(&command_count, &ACCOUNT),
        done.executed + done.rejected
    );
    let load_count = format!("{}_count", names::LOAD_DURATION);
    assert!(delta(&load_count, &ACCOUNT) >= done.executed + done.rejected);
    assert_eq!(delta(names::UNITS, &[("outcome", "committed")]), 1);

    let projection = [("projection", "large_deposits")];
    assert_eq!(done.handled, done.events);
    assert_eq!(delta(names::PROJECTION_EVENTS, &projection), done.handled);
    assert!(delta(names::PROJECTION_BATCHES, &projection) >= 1);
    let batch_count = format!("{}_count", names::PROJECTION_BATCH_DURATION);
    assert_eq!(
        delta(&batch_count, &projection),
        delta(names::PROJECTION_BATCHES, &projection)
    );
    // Caught up: no lag; the checkpoint is at the last event.
    assert_eq!(after.sum(names::PROJECTION_LAG_EVENTS, &projection), 0.0);
    assert_eq!(after.sum(names::PROJECTION_LAG_SECONDS, &projection), 0.0);
    let mut conn = db.pool().acquire().await.unwrap();
    let head = es::store::ProjectionStore::head_position(db.store(), &mut conn)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(
        after.sum(names::PROJECTION_POSITION, &projection),
        head as f64
    );
    assert!(
        after.help.contains(names::PROJECTION_LAG_EVENTS),
        "described"
    );
    assert!(
        after.has(names::PROJECTION_FAILURES),
        "registered with the projection"
    );
    assert_eq!(delta(names::PROJECTION_FAILURES, &projection), 0);
    db.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_prometheus_endpoint_counts_commands_appends_and_projection_batches() {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");
    names::describe();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(telemetry::serve(listener, handle, async {
        let _ = stopped.await;
    }));

    counts_what_it_did(addr, TestDatabase::sqlite().await.unwrap()).await;
    let url = support::database_url();
    counts_what_it_did(addr, TestDatabase::postgres(&url).await.unwrap()).await;
    #[cfg(feature = "mysql")]
    {
        let url = support::mysql_url();
        counts_what_it_did(addr, TestDatabase::mysql(&url).await.unwrap()).await;
    }

    // Anything but /metrics is a 404.
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
