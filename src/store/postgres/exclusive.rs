//! One evalgate per `PostgreSQL` database, until leases let several share the work.
//!
//! Without leases, two evalgates on one database would both drive every batch (two submits, two
//! polls, two webhook attempts). So the one in force holds a session-level advisory lock on a
//! connection of its own for as long as it runs; a second one waits up to `EXCLUSIVE_WAIT` for
//! it (a restart: the old process's connection is going away) and then refuses to start. If the
//! connection holding the lock ends, `hold` returns an error and the process stops: working
//! without the lock could overlap another evalgate.
use std::time::Duration;

use tokio_postgres::NoTls;

use super::super::StoreError;
use crate::config::PostgresConfig;

/// The advisory lock key of the evalgate in force ("evalgate" + 1; the migrations use the
/// bare key).
const EXCLUSIVE_LOCK: i64 = 0x6576_616c_6761_7466;
/// How long a starting evalgate waits for the lock before refusing to start.
const EXCLUSIVE_WAIT: Duration = Duration::from_secs(5);
/// Pause between tries while waiting.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// The held lock: its connection, driven by `hold`.
pub(crate) struct Exclusive {
    client: tokio_postgres::Client,
    connection:
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
}

impl std::fmt::Debug for Exclusive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exclusive").finish_non_exhaustive()
    }
}

impl Exclusive {
    /// Takes the lock, waiting up to `EXCLUSIVE_WAIT` for a previous holder to go.
    pub(crate) async fn acquire(config: &PostgresConfig) -> Result<Self, StoreError> {
        let pg: tokio_postgres::Config = config
            .url_secret
            .expose()
            .parse()
            .map_err(StoreError::PostgresUrl)?;
        let (client, mut connection) = pg.connect(NoTls).await?;
        let deadline = tokio::time::Instant::now() + EXCLUSIVE_WAIT;
        loop {
            // The connection is polled while the query runs (it carries the query).
            let acquired = tokio::select! {
                row = client.query_one("SELECT pg_try_advisory_lock($1)", &[&EXCLUSIVE_LOCK]) => row?.get::<_, bool>(0),
                ended = &mut connection => {
                    ended?;
                    return Err(StoreError::ExclusiveLost);
                }
            };
            if acquired {
                return Ok(Self { client, connection });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::InUse);
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY_EVERY) => {}
                ended = &mut connection => {
                    ended?;
                    return Err(StoreError::ExclusiveLost);
                }
            }
        }
    }

    /// Keeps the lock until the connection ends (an error: the process must stop) or the
    /// future is dropped (shutdown: the connection closes and the server releases the lock).
    pub(crate) async fn hold(self) -> Result<(), StoreError> {
        let Self { client, connection } = self;
        let ended = connection.await;
        drop(client);
        ended?;
        Err(StoreError::ExclusiveLost)
    }
}
