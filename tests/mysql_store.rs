//! The store API against MySQL / MariaDB: the conformance suite, plus what
//! only MySQL has: positions drawn under a lock held to commit, names
//! compared as bytes, deadlock victims reported as conflicts.
#![cfg(feature = "mysql")]

mod conformance;
mod support;

use support::mysql::MySqlDb;

store_conformance_tests!(MySqlDb);
projection_conformance_tests!(MySqlDb);
