//! Counts the statements sqlx sends, through its `sqlx::query` log events.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// The statements run while `f`'s future ran on this thread (use a
/// current-thread runtime).
#[derive(Default, Clone)]
pub struct StatementLog {
    statements: Arc<Mutex<Vec<String>>>,
    next_span: Arc<AtomicUsize>,
}

impl StatementLog {
    pub fn statements(&self) -> Vec<String> {
        self.statements.lock().unwrap().clone()
    }
}

struct Summary(Option<String>);

impl Visit for Summary {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "db.statement" || (self.0.is_none() && field.name() == "summary") {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl Subscriber for StatementLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == "sqlx::query"
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed) as u64 + 1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        if event.metadata().target() == "sqlx::query" {
            let mut summary = Summary(None);
            event.record(&mut summary);
            self.statements
                .lock()
                .unwrap()
                .push(summary.0.unwrap_or_default());
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Runs `fut` to completion on a fresh current-thread runtime with the log
/// installed, and returns its output with the statements it ran.
pub fn count_statements<F: std::future::Future>(fut: F) -> (F::Output, Vec<String>) {
    let log = StatementLog::default();
    let out = tracing::subscriber::with_default(log.clone(), || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(fut)
    });
    (out, log.statements())
}
