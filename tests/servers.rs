//! The tests' servers (tests/support/server.rs): the URLs every test binary
//! shares, and private servers that a test may stop, crash and restart.

mod support;

use sqlx::{Connection, MySqlConnection, PgConnection};
use support::server::{Backend, TestServer, unreachable};

#[tokio::test]
async fn the_postgres_url_reaches_a_server_with_a_test_database() {
    let url = support::database_url();
    let mut conn = PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| unreachable(Backend::Postgres, &url, &e));
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn the_mysql_url_reaches_a_server_with_a_test_database() {
    let url = support::mysql_url();
    let mut conn = MySqlConnection::connect(&url)
        .await
        .unwrap_or_else(|e| unreachable(Backend::MySql, &url, &e));
    let one: i64 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    conn.close().await.unwrap();
}

const PG_RECOVERY: &str = "not properly shut down; automatic recovery in progress";
const INNODB_RECOVERY: &str = "InnoDB: Starting crash recovery";

/// How often the server recovered from a crash: an immediate stop and a
/// kill are crashes to it.
fn recoveries(server: &TestServer, line: &str) -> usize {
    server.log().matches(line).count()
}

/// Stamps out, for one backend, the test that a private server keeps
/// committed rows across an immediate stop, a kill and a fast stop, and
/// leaves nothing behind when dropped.
macro_rules! keeps_committed_rows_across_a_crash {
    ($name:ident, $server:expr, $conn:ty, $create:expr, $recovery:expr) => {
        #[tokio::test]
        async fn $name() {
            async fn count(url: &str) -> i64 {
                let mut conn = <$conn>::connect(url).await.expect("reconnect");
                let n = sqlx::query_scalar("SELECT count(*) FROM kept WHERE x = 42")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.ok();
                n
            }
            let mut server = $server;
            let url = server.url();
            let mut conn = <$conn>::connect(&url).await.expect("connect");
            sqlx::raw_sql($create).execute(&mut conn).await.unwrap();

            server.stop_immediate();
            // The old connection is gone with the server.
            assert!(sqlx::query("SELECT 1").execute(&mut conn).await.is_err());
            server.start();
            assert_eq!(recoveries(&server, $recovery), 1, "{}", server.log());
            assert_eq!(count(&url).await, 1);

            server.kill();
            server.start();
            assert_eq!(recoveries(&server, $recovery), 2, "{}", server.log());
            assert_eq!(count(&url).await, 1);

            server.stop_fast();
            server.start();
            assert_eq!(count(&url).await, 1);

            let dir = server.dir().to_owned();
            drop(server);
            assert!(!dir.exists(), "{} is removed on drop", dir.display());
        }
    };
}

keeps_committed_rows_across_a_crash!(
    a_private_postgres_server_keeps_committed_rows_across_a_crash,
    TestServer::postgres(),
    PgConnection,
    "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)",
    PG_RECOVERY
);

keeps_committed_rows_across_a_crash!(
    a_private_mysql_server_keeps_committed_rows_across_a_crash,
    TestServer::mysql(),
    MySqlConnection,
    "CREATE TABLE kept (x int) ENGINE = InnoDB; INSERT INTO kept VALUES (42)",
    INNODB_RECOVERY
);
