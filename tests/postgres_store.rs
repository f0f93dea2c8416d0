//! The store API against PostgreSQL: the conformance suite, plus what only
//! PostgreSQL has (configurable schema, the unique-constraint safety net,
//! one statement per append).

mod conformance;
mod support;

use support::TestDb;

store_conformance_tests!(TestDb);
