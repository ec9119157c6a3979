//! `PostgresStore` specifics: error classification, the pool, the statement timeout, migrations
//! under concurrent starts, and URLs kept out of errors. What every store promises is in
//! `store/contract.rs`. Tests that need a server skip (or fail, in CI) without
//! `EVALGATE_TEST_POSTGRES_URL`.
use deadpool_postgres::{BuildError, HookError, PoolError, TimeoutType};
use tokio::task::JoinSet;

use super::{testdb::TestDatabase, *};
use crate::{error::ErrorChain, types::Secret};

const PASSWORD: &str = "s3cr3t-pw";

/// Every rendering of an error a log or a response could show.
fn rendered(error: &StoreError) -> String {
    format!("{error} | {} | {error:?}", ErrorChain(error))
}

#[test]
fn sqlstates_that_pass_by_themselves_are_transient() {
    for code in [
        "08000", // connection exception
        "08003", // connection does not exist
        "08006", // connection failure
        "08001", // client unable to establish connection
        "08004", // server rejected the connection
        "40001", // serialization failure
        "40P01", // deadlock detected
        "53000", // insufficient resources
        "53100", // disk full
        "53200", // out of memory
        "53300", // too many connections
        "57P01", // admin shutdown
        "57P02", // crash shutdown
        "57P03", // cannot connect now
        "57014", // query canceled (statement_timeout)
    ] {
        assert!(is_transient_sqlstate(code), "{code} is transient");
    }
    for code in [
        "23505", // unique violation
        "23503", // foreign key violation
        "23502", // not null violation
        "42601", // syntax error
        "42P01", // undefined table
        "42703", // undefined column
        "22P02", // invalid text representation
        "22003", // numeric value out of range
        "28P01", // invalid password
        "3D000", // invalid catalog name (no such database)
        "40002", // integrity constraint violation (transaction rollback class, not 40001)
        "57000", // operator intervention (not one of the listed)
        "55P03", // lock not available
        "XX000", // internal error
    ] {
        assert!(!is_transient_sqlstate(code), "{code} is permanent");
    }
}

#[test]
fn pool_errors_are_transient_only_for_timeouts_and_lost_connections() {
    for timeout in [TimeoutType::Wait, TimeoutType::Create, TimeoutType::Recycle] {
        assert!(StoreError::PostgresPool(PoolError::Timeout(timeout)).is_transient());
    }
    for permanent in [
        PoolError::Closed,
        PoolError::NoRuntimeSpecified,
        PoolError::PostCreateHook(HookError::Message("refused".into())),
    ] {
        assert!(!StoreError::PostgresPool(permanent).is_transient());
    }
    assert!(!StoreError::PostgresBuild(BuildError::NoRuntimeSpecified).is_transient());
}

/// A port on 127.0.0.1 where nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn config_for(url: String) -> PostgresConfig {
    PostgresConfig {
        url: "postgres://evalgate:*****@masked".to_owned(),
        url_secret: Secret::new(url),
        pool_size: 2,
        statement_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn a_refused_connection_is_transient_and_no_error_shows_the_password() {
    let url = format!(
        "postgres://evalgate:{PASSWORD}@127.0.0.1:{}/evalgate",
        closed_port()
    );
    let error = PostgresStore::connect(&config_for(url)).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::PostgresPool(PoolError::Backend(_))),
        "{error:?}"
    );
    assert!(error.is_transient(), "{error:?}");
    assert!(
        std::error::Error::source(&error).is_some(),
        "keeps its source"
    );
    let shown = rendered(&error);
    assert!(!shown.contains(PASSWORD), "{shown}");

    // A URL tokio-postgres cannot use: permanent, and not echoed either.
    let url = format!("postgres://evalgate:{PASSWORD}@127.0.0.1:1/evalgate?no_such_option=1");
    let error = PostgresStore::connect(&config_for(url)).await.unwrap_err();
    assert!(matches!(&error, StoreError::PostgresUrl(_)), "{error:?}");
    assert!(!error.is_transient());
    let shown = rendered(&error);
    assert!(!shown.contains(PASSWORD), "{shown}");
}

async fn store(db: &TestDatabase, pool_size: usize) -> PostgresStore {
    PostgresStore::connect(&db.config(pool_size)).await.unwrap()
}

#[tokio::test]
async fn server_errors_are_classified_by_sqlstate() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = store(&db, 2).await;
    let client = store.client().await.unwrap();
    let fail = |sql: &'static str| {
        let client = &client;
        async move { StoreError::from(client.batch_execute(sql).await.unwrap_err()) }
    };
    for (sql, code) in [
        (
            "INSERT INTO evalgate_meta (key, value) VALUES ('schema_version', '1')",
            SqlState::UNIQUE_VIOLATION,
        ),
        (
            "INSERT INTO batches (job_id, idx, item_start, item_end, payload, state, updated_at)
             VALUES ('egj_none', 0, 0, 1, '', 'pending', 0)",
            SqlState::FOREIGN_KEY_VIOLATION,
        ),
        ("SELECT * FROM no_such_table", SqlState::UNDEFINED_TABLE),
        ("SELEC 1", SqlState::SYNTAX_ERROR),
        ("SELECT 'x'::BIGINT", SqlState::INVALID_TEXT_REPRESENTATION),
    ] {
        let error = fail(sql).await;
        let StoreError::Postgres(inner) = &error else {
            panic!("{error:?}");
        };
        assert_eq!(inner.code(), Some(&code), "{sql}: {error:?}");
        assert!(!error.is_transient(), "{sql} is permanent");
    }

    // A statement that outlives `statement_timeout` is cancelled by the server: transient.
    drop(client);
    let mut config = db.config(1);
    config.statement_timeout = Duration::from_millis(100);
    let short = PostgresStore::connect(&config).await.unwrap();
    let client = short.client().await.unwrap();
    let error = StoreError::from(
        client
            .batch_execute("SELECT pg_sleep(30)")
            .await
            .unwrap_err(),
    );
    let StoreError::Postgres(inner) = &error else {
        panic!("{error:?}");
    };
    assert_eq!(inner.code(), Some(&SqlState::QUERY_CANCELED), "{error:?}");
    assert!(error.is_transient());
}

#[tokio::test]
async fn a_connection_lost_mid_use_is_transient() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = store(&db, 2).await;
    let client = store.client().await.unwrap();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let (admin, _connection) = testdb::raw_connect(db.url()).await;
    let terminated: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    let error = StoreError::from(client.batch_execute("SELECT 1").await.unwrap_err());
    assert!(error.is_transient(), "{error:?}");
    // Not given back to the pool: the next call gets a new connection.
    drop(deadpool_postgres::Object::take(client));
    store.ping().await.unwrap();
}

#[tokio::test]
async fn every_pooled_connection_runs_with_the_statement_timeout() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let mut config = db.config(3);
    config.statement_timeout = Duration::from_millis(1_500);
    let store = PostgresStore::connect(&config).await.unwrap();
    // Hold all three at once, so that they are three connections.
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(store.client().await.unwrap());
    }
    let mut pids = Vec::new();
    for client in &clients {
        let row = client
            .query_one(
                "SELECT current_setting('statement_timeout'), pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "1500ms");
        pids.push(row.get::<_, i32>(1));
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 3);
    assert_eq!(
        store.pool.status().max_size,
        3,
        "pool_size connections at most"
    );
}

#[tokio::test]
async fn no_free_connection_in_time_is_a_transient_pool_timeout() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = PostgresStore::connect_with(&db.config(1), Duration::from_millis(100))
        .await
        .unwrap();
    let held = store.client().await.unwrap();
    let error = store.ping().await.unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::PostgresPool(PoolError::Timeout(TimeoutType::Wait))
        ),
        "{error:?}"
    );
    assert!(error.is_transient());
    drop(held);
    store.ping().await.unwrap();
}

#[tokio::test]
async fn replicas_starting_at_once_migrate_once() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let mut starts = JoinSet::new();
    for _ in 0..4 {
        let config = db.config(1);
        starts.spawn(async move { PostgresStore::connect(&config).await });
    }
    let stores: Vec<PostgresStore> = starts
        .join_all()
        .await
        .into_iter()
        .map(|started| started.unwrap())
        .collect();
    let client = stores[0].client().await.unwrap();
    let version: String = client
        .query_one(
            "SELECT value FROM evalgate_meta WHERE key = 'schema_version'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, MIGRATIONS.len().to_string());
    let tables: Vec<String> = client
        .query(
            "SELECT tablename::TEXT FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        tables,
        [
            "batches",
            "evalgate_meta",
            "job_events",
            "jobs",
            "webhook_attempts",
            "webhook_deliveries"
        ]
    );
    // Migration 4's column and per-tenant unique index are there.
    let index: String = client
        .query_one(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'jobs_by_idempotency'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(index.contains("UNIQUE"), "{index}");
    assert!(index.contains("(tenant, idempotency_key)"), "{index}");
    drop(client);
    for store in &stores {
        store.ping().await.unwrap();
    }
}

#[tokio::test]
async fn the_debug_form_of_a_store_shows_no_password() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    // The test server trusts local connections: a password in the URL is accepted unused.
    let mut url = url::Url::parse(db.url()).unwrap();
    url.set_password(Some(PASSWORD)).unwrap();
    let mut config = db.config(1);
    config.url_secret = Secret::new(url.to_string());
    config.url = "postgres://postgres:*****@127.0.0.1/masked".to_owned();
    let store = PostgresStore::connect(&config).await.unwrap();
    store.ping().await.unwrap();
    let shown = format!("{store:?}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(shown.contains("*****@127.0.0.1/masked"), "{shown}");
}
