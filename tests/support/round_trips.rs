//! Counts the statements sqlx sends, through its `sqlx::query` log events.
//!
//! A global subscriber records events only on threads that asked for it,
//! so tests running in parallel do not see each other's statements.

use std::cell::RefCell;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

thread_local! {
    static RECORDED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

struct ThreadRecorder {
    next_span: AtomicU64,
}

struct Statement(Option<String>);

impl Visit for Statement {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            // the full text, when it is longer than the summary
            "db.statement" if text.len() > 2 => self.0 = Some(text),
            "summary" if self.0.is_none() => self.0 = Some(text),
            _ => {}
        }
    }
}

impl Subscriber for ThreadRecorder {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == "sqlx::query"
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        RECORDED.with(|recorded| {
            if let Some(statements) = recorded.borrow_mut().as_mut() {
                let mut statement = Statement(None);
                event.record(&mut statement);
                statements.push(statement.0.unwrap_or_default());
            }
        });
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(ThreadRecorder {
            next_span: AtomicU64::new(0),
        })
        .expect("no other global subscriber in the test binary");
    });
}

/// Runs `fut` on a fresh current-thread runtime (so on this thread) and
/// returns its output with the statements it ran.
pub fn count_statements<F: std::future::Future>(fut: F) -> (F::Output, Vec<String>) {
    install();
    RECORDED.with(|r| *r.borrow_mut() = Some(Vec::new()));
    let out = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(fut);
    let statements = RECORDED.with(|r| r.borrow_mut().take()).unwrap_or_default();
    (out, statements)
}
