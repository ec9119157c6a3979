//! Throwaway `PostgreSQL` databases for the tests: one per test, created on the server named by
//! `EVALGATE_TEST_POSTGRES_URL` (on 127.0.0.1, trust authentication) and dropped when the
//! `TestDatabase` is, whether the test passed or not.
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_postgres::NoTls;

use crate::{config::PostgresConfig, types::Secret};

/// The variable naming the test server (a URL to any database of it).
pub(in crate::store) const URL_VAR: &str = "EVALGATE_TEST_POSTGRES_URL";

#[expect(
    clippy::disallowed_methods,
    reason = "opt-in test knobs (the test server, CI), not service configuration"
)]
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The test server's URL. Unset: in CI (`CI` set) the test fails; elsewhere it is skipped
/// (`None`, after saying so).
pub(in crate::store) fn server_url() -> Option<String> {
    if let Some(url) = env(URL_VAR) {
        return Some(url);
    }
    assert!(
        env("CI").is_none(),
        "{URL_VAR} is not set: CI must run the PostgreSQL store tests \
         (start a server with `bash .ci/postgres.sh start DIR`, which prints the URL)"
    );
    println!("skipped: {URL_VAR} is not set");
    None
}

/// A plain connection (not pooled) to `url`; its connection task lives in the returned set.
pub(in crate::store) async fn raw_connect(
    url: &str,
) -> (
    tokio_postgres::Client,
    JoinSet<Result<(), tokio_postgres::Error>>,
) {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"));
    let mut tasks = JoinSet::new();
    tasks.spawn(connection);
    (client, tasks)
}

/// A fresh, empty database of the test server.
#[derive(Debug)]
pub(in crate::store) struct TestDatabase {
    server: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates `evalgate_t_<uuid>`; `None` when the tests run without a server.
    pub(in crate::store) async fn create() -> Option<Self> {
        let server = server_url()?;
        let name = format!("evalgate_t_{}", uuid::Uuid::now_v7().simple());
        let mut url = url::Url::parse(&server).expect("EVALGATE_TEST_POSTGRES_URL is a URL");
        assert!(
            matches!(
                url.host_str(),
                Some("127.0.0.1" | "localhost" | "::1" | "[::1]")
            ),
            "the test server must be on the loopback interface"
        );
        url.set_path(&format!("/{name}"));
        let (client, _connection) = raw_connect(&server).await;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        Some(Self {
            server,
            name,
            url: url.to_string(),
        })
    }

    /// The URL of this database.
    pub(in crate::store) fn url(&self) -> &str {
        &self.url
    }

    /// A store configuration for this database.
    pub(in crate::store) fn config(&self, pool_size: usize) -> PostgresConfig {
        PostgresConfig {
            url: self.url.clone(),
            url_secret: Secret::new(self.url.clone()),
            pool_size,
            statement_timeout: Duration::from_secs(30),
        }
    }

    /// Runs `sql` on this database over a connection of its own (outside any store).
    pub(in crate::store) async fn execute(&self, sql: &str) {
        let (client, _connection) = raw_connect(&self.url).await;
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
}

impl Drop for TestDatabase {
    /// Best effort: drops the database (closing whatever is still connected to it) on a thread
    /// and runtime of its own, since `drop` cannot await and the test's runtime may be ending.
    fn drop(&mut self) {
        let server = self.server.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok((client, connection)) = tokio_postgres::connect(&server, NoTls).await {
                    let work = async move { client.batch_execute(&sql).await };
                    tokio::select! {
                        _ = work => {}
                        _ = connection => {}
                    }
                }
            });
        });
        // A failed drop leaves a database behind; it never fails the test.
        dropper.join().ok();
    }
}
