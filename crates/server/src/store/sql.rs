//! The store's one seam to a database: the few calls its SQL code makes (`execute`,
//! `query_row`, `prepare` and `query_map`, `execute_batch`, transactions), with SQLite and
//! PostgreSQL behind them.
//!
//! The store writes one SQL text for both. It keeps to what both run: `?N` placeholders
//! (numbered `$N` for PostgreSQL here), `RETURNING` instead of a last row id, `CASE` instead of
//! SQLite's two-argument `MAX`, `CAST(.. AS BIGINT)` around aggregates PostgreSQL would make
//! `NUMERIC`. Schema migrations are written for SQLite and widened for PostgreSQL by
//! [`postgres_ddl`] (`INTEGER` row ids become identity columns, `BLOB` becomes `BYTEA`).
//!
//! Rows are read whole into [`Value`]s, so a row reader works the same on either database.
//! PostgreSQL's client runs on a thread of its own ([`PgConn`]): the store's callers may be
//! async tasks, and the `postgres` client must not block inside a Tokio runtime.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::mpsc;

/// Most prepared statements a PostgreSQL connection keeps; the cache is emptied when full.
const PG_STATEMENT_CACHE_MAX: usize = 512;
/// How long connecting to PostgreSQL may take (unless the URL's `connect_timeout` says).
const PG_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long sent data may stay unacknowledged before the session counts as broken (unless
/// the URL's `tcp_user_timeout` says).
const PG_TCP_USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Idle time before TCP keepalives probe the session.
const PG_KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(10);
/// Most calls queued for a PostgreSQL connection's thread (its callers hold the store's lock,
/// so one at a time in practice).
const PG_QUEUE_MAX: usize = 16;

/// A value in a row or a parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Integer(_) => "an integer",
            Value::Real(_) => "a real",
            Value::Text(_) => "text",
            Value::Blob(_) => "a blob",
        }
    }
}

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("the query returned no rows")]
    NoRows,
    #[error("column {column}: {reason}")]
    Column { column: usize, reason: String },
    #[error("the PostgreSQL connection's thread has stopped")]
    Disconnected,
    #[error("cannot start the PostgreSQL connection's thread: {0}")]
    Thread(String),
    #[error("TLS to PostgreSQL: {0}")]
    Tls(String),
    #[error(
        "the PostgreSQL session ended in the middle of a transaction (PostgreSQL rolled it back); \
         nothing of it was written"
    )]
    SessionLost,
    /// A write by a server that no longer holds the engine's lease (see `store/lease.rs`).
    #[error(
        "this server no longer holds the engine's lease (its epoch {ours}, the lease's {current:?}): \
         another server drives the engine now; nothing was written"
    )]
    Fenced { ours: i64, current: Option<i64> },
}

/// A PostgreSQL error with what the server said (its `Display` is only "db error").
fn postgres_message(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{} ({}): {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

pub type Result<T, E = SqlError> = std::result::Result<T, E>;

/// A row as read: its columns' values.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    values: Vec<Value>,
}

/// How a row's column is named: by its position.
pub trait ColumnIndex {
    fn position(self) -> usize;
}

impl ColumnIndex for usize {
    fn position(self) -> usize {
        self
    }
}

impl Row {
    /// The column at `index` as a `T`.
    pub fn get<I: ColumnIndex, T: FromSql>(&self, index: I) -> Result<T> {
        let column = index.position();
        let value = self.values.get(column).ok_or_else(|| SqlError::Column {
            column,
            reason: format!("the row has {} columns", self.values.len()),
        })?;
        T::from_sql(value).map_err(|reason| SqlError::Column { column, reason })
    }
}

/// A Rust value read from a column.
pub trait FromSql: Sized {
    /// The value as `Self`, or why it is not one.
    fn from_sql(value: &Value) -> Result<Self, String>;
}

fn expected(what: &str, value: &Value) -> String {
    format!("expected {what}, found {}", value.kind())
}

impl FromSql for i64 {
    fn from_sql(value: &Value) -> Result<Self, String> {
        match value {
            Value::Integer(i) => Ok(*i),
            other => Err(expected("an integer", other)),
        }
    }
}

macro_rules! from_sql_narrow_integer {
    ($($t:ty),*) => {$(
        impl FromSql for $t {
            fn from_sql(value: &Value) -> Result<Self, String> {
                let wide = i64::from_sql(value)?;
                <$t>::try_from(wide).map_err(|_| format!("{wide} is out of range for {}", stringify!($t)))
            }
        }
    )*};
}
from_sql_narrow_integer!(i32, u32, u64, usize);

impl FromSql for bool {
    fn from_sql(value: &Value) -> Result<Self, String> {
        i64::from_sql(value).map(|i| i != 0)
    }
}

impl FromSql for f64 {
    fn from_sql(value: &Value) -> Result<Self, String> {
        match value {
            Value::Real(f) => Ok(*f),
            // Integer-valued reals as SQLite returns them from arithmetic.
            Value::Integer(i) => Ok(*i as f64),
            other => Err(expected("a real", other)),
        }
    }
}

impl FromSql for String {
    fn from_sql(value: &Value) -> Result<Self, String> {
        match value {
            Value::Text(text) => Ok(text.clone()),
            other => Err(expected("text", other)),
        }
    }
}

impl FromSql for Vec<u8> {
    fn from_sql(value: &Value) -> Result<Self, String> {
        match value {
            Value::Blob(bytes) => Ok(bytes.clone()),
            other => Err(expected("a blob", other)),
        }
    }
}

impl<T: FromSql> FromSql for Option<T> {
    fn from_sql(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_sql(other).map(Some),
        }
    }
}

/// A Rust value sent as a parameter.
pub trait ToSql {
    fn to_value(&self) -> Value;
}

impl<T: ToSql + ?Sized> ToSql for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

impl ToSql for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

macro_rules! to_sql_integer {
    ($($t:ty),*) => {$(
        impl ToSql for $t {
            fn to_value(&self) -> Value {
                Value::Integer(i64::from(*self))
            }
        }
    )*};
}
to_sql_integer!(i64, i32, u32, u8, bool);

macro_rules! to_sql_wide_unsigned {
    ($($t:ty),*) => {$(
        /// Clamped to `i64::MAX`, as the store clamps numbers from outside (a time or an id
        /// that large finds nothing rather than failing the statement).
        impl ToSql for $t {
            fn to_value(&self) -> Value {
                Value::Integer(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
to_sql_wide_unsigned!(u64, usize);

impl ToSql for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}

impl ToSql for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl ToSql for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl ToSql for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl ToSql for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}

impl<T: ToSql> ToSql for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToSql::to_value)
    }
}

/// A statement's parameters: `params![a, b]`, an array of one type, or `[]` for none.
pub trait Params {
    fn into_values(self) -> Vec<Value>;
}

impl Params for &[&dyn ToSql] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(|p| p.to_value()).collect()
    }
}

impl Params for [&(dyn ToSql + Send + Sync); 0] {
    fn into_values(self) -> Vec<Value> {
        Vec::new()
    }
}

impl Params for Vec<Value> {
    fn into_values(self) -> Vec<Value> {
        self
    }
}

macro_rules! params_array {
    ($($n:literal),*) => {$(
        impl<T: ToSql> Params for [T; $n] {
            fn into_values(self) -> Vec<Value> {
                self.iter().map(ToSql::to_value).collect()
            }
        }
    )*};
}
params_array!(1, 2, 3, 4, 5, 6, 7, 8);

/// Parameters of mixed types: `params![name, 3, Some(x)]`.
macro_rules! params {
    () => { &[] as &[&dyn $crate::store::sql::ToSql] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::sql::ToSql),+] as &[&dyn $crate::store::sql::ToSql] };
}
pub(crate) use params;

/// `.optional()` on a query that may find no row.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(SqlError::NoRows) => Ok(None),
            Err(SqlError::Sqlite(rusqlite::Error::QueryReturnedNoRows)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What runs statements: a [`Connection`] or a [`Transaction`].
pub trait Queryable {
    /// Runs one statement; the number of rows it changed.
    fn run(&self, sql: &str, params: Vec<Value>) -> Result<usize>;
    /// Runs one query; all its rows.
    fn fetch(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>>;
    /// Runs statements separated by `;`, without parameters.
    fn execute_batch(&self, sql: &str) -> Result<()>;

    fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize>
    where
        Self: Sized,
    {
        self.run(sql, params.into_values())
    }

    /// The first row of a query, read by `f`; [`SqlError::NoRows`] when there is none.
    fn query_row<T, P: Params, F: FnOnce(&Row) -> Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> Result<T>
    where
        Self: Sized,
    {
        let rows = self.fetch(sql, params.into_values())?;
        rows.first().map_or(Err(SqlError::NoRows), f)
    }

    fn prepare(&self, sql: &str) -> Result<Statement<'_, Self>>
    where
        Self: Sized,
    {
        Ok(Statement {
            on: self,
            sql: sql.to_owned(),
        })
    }

    /// As [`Queryable::prepare`]: both databases cache prepared statements here.
    fn prepare_cached(&self, sql: &str) -> Result<Statement<'_, Self>>
    where
        Self: Sized,
    {
        self.prepare(sql)
    }
}

/// A statement to run, perhaps several times.
pub struct Statement<'c, Q> {
    on: &'c Q,
    sql: String,
}

impl<Q> std::fmt::Debug for Statement<'_, Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Statement")
            .field("sql", &self.sql)
            .finish_non_exhaustive()
    }
}

impl<Q: Queryable> Statement<'_, Q> {
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        self.on.run(&self.sql, params.into_values())
    }

    pub fn query_row<T, P: Params, F: FnOnce(&Row) -> Result<T>>(
        &mut self,
        params: P,
        f: F,
    ) -> Result<T> {
        self.on.query_row(&self.sql, params, f)
    }

    /// Every row, each read by `f`.
    pub fn query_map<T, P: Params, F: FnMut(&Row) -> Result<T>>(
        &mut self,
        params: P,
        mut f: F,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let rows = self.on.fetch(&self.sql, params.into_values())?;
        Ok(rows.iter().map(&mut f).collect::<Vec<_>>().into_iter())
    }
}

/// A connection to the store's database.
pub struct Connection {
    backend: Backend,
    /// Rows changed through this connection (PostgreSQL; SQLite counts its own).
    changes: Cell<u64>,
    /// The lease epoch every write transaction checks first (PostgreSQL, once a lease is held).
    fence: Option<i64>,
}

/// The fencing check at the start of a write transaction: the lease row, share-locked until
/// the transaction ends, so a takeover waits for it.
const FENCE_CHECK: &str = "SELECT epoch FROM leases WHERE name = 'engine' FOR SHARE";

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field(
                "backend",
                &if self.is_postgres() {
                    "postgres"
                } else {
                    "sqlite"
                },
            )
            .finish_non_exhaustive()
    }
}

enum Backend {
    Sqlite(rusqlite::Connection),
    Postgres(PgConn),
}

impl Connection {
    pub fn sqlite(conn: rusqlite::Connection) -> Self {
        Self {
            backend: Backend::Sqlite(conn),
            changes: Cell::new(0),
            fence: None,
        }
    }

    /// Connects to PostgreSQL at `url` (`postgres://user@host:port/db`).
    pub fn postgres(url: &str) -> Result<Self> {
        Ok(Self {
            backend: Backend::Postgres(PgConn::connect(url)?),
            changes: Cell::new(0),
            fence: None,
        })
    }

    /// Whether this is a PostgreSQL connection.
    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The SQLite connection underneath, for what only SQLite has (pragmas).
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.backend {
            Backend::Sqlite(conn) => Some(conn),
            Backend::Postgres(_) => None,
        }
    }

    /// Rows changed through this connection since it was opened.
    pub fn total_changes(&self) -> u64 {
        match &self.backend {
            Backend::Sqlite(conn) => conn.total_changes(),
            Backend::Postgres(_) => self.changes.get(),
        }
    }

    /// Runs a session setting (`SET ...`) now and on every session this connection opens later
    /// (PostgreSQL; SQLite has none).
    pub fn set_session(&self, sql: &str) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(pg) => pg.setup(sql),
        }
    }

    /// From now on every write checks the lease is still at `epoch` (PostgreSQL).
    pub fn set_fence(&mut self, epoch: i64) {
        self.fence = Some(epoch);
    }

    /// The lease epoch this connection's writes are fenced by, if any.
    pub fn fence(&self) -> Option<i64> {
        self.fence
    }

    /// Starts a transaction; it rolls back when dropped without [`Transaction::commit`].
    /// Under a fence it first checks the lease (see [`SqlError::Fenced`]).
    pub fn transaction(&mut self) -> Result<Transaction<'_>> {
        let Connection {
            backend,
            changes,
            fence,
        } = self;
        let inner = match backend {
            Backend::Sqlite(conn) => TxInner::Sqlite(conn.transaction()?),
            Backend::Postgres(pg) => {
                pg.begin()?;
                if let Some(ours) = *fence
                    && let Err(e) = check_fence(pg, ours)
                {
                    let _ = pg.rollback();
                    return Err(e);
                }
                TxInner::Postgres(pg)
            }
        };
        Ok(Transaction {
            inner: Some(inner),
            changes,
        })
    }
}

fn check_fence(pg: &PgConn, ours: i64) -> Result<()> {
    let current = pg
        .fetch(FENCE_CHECK, Vec::new())?
        .first()
        .map(|row| row.get::<_, i64>(0))
        .transpose()?;
    if current == Some(ours) {
        Ok(())
    } else {
        Err(SqlError::Fenced { ours, current })
    }
}

impl Queryable for Connection {
    fn run(&self, sql: &str, params: Vec<Value>) -> Result<usize> {
        match (&self.backend, self.fence) {
            (Backend::Sqlite(conn), _) => sqlite_run(conn, sql, params),
            (Backend::Postgres(pg), None) => count(&self.changes, pg.run(sql, params)),
            // A write outside a transaction is fenced in one of its own.
            (Backend::Postgres(pg), Some(ours)) => {
                pg.begin()?;
                let done = check_fence(pg, ours)
                    .and_then(|()| pg.run(sql, params))
                    .and_then(|n| pg.commit().map(|()| n));
                if done.is_err() {
                    let _ = pg.rollback();
                }
                count(&self.changes, done)
            }
        }
    }

    fn fetch(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        match &self.backend {
            Backend::Sqlite(conn) => sqlite_fetch(conn, sql, params),
            Backend::Postgres(pg) => pg.fetch(sql, params),
        }
    }

    fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Backend::Postgres(pg) => pg.batch(sql),
        }
    }
}

fn count(changes: &Cell<u64>, changed: Result<usize>) -> Result<usize> {
    if let Ok(n) = changed {
        changes.set(changes.get().wrapping_add(n as u64));
    }
    changed
}

/// A transaction on a [`Connection`].
pub struct Transaction<'c> {
    /// `None` once committed.
    inner: Option<TxInner<'c>>,
    changes: &'c Cell<u64>,
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("open", &self.inner.is_some())
            .finish_non_exhaustive()
    }
}

enum TxInner<'c> {
    Sqlite(rusqlite::Transaction<'c>),
    Postgres(&'c PgConn),
}

impl<'c> Transaction<'c> {
    pub fn commit(mut self) -> Result<()> {
        match self.inner.take() {
            Some(TxInner::Sqlite(tx)) => Ok(tx.commit()?),
            Some(TxInner::Postgres(pg)) => pg.commit(),
            None => Ok(()),
        }
    }

    fn open(&self) -> Result<&TxInner<'c>> {
        self.inner.as_ref().ok_or(SqlError::Disconnected)
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if let Some(TxInner::Postgres(pg)) = &self.inner {
            // Nothing to tell anyone if this fails: the connection is then broken and the
            // database rolls the transaction back itself.
            let _ = pg.rollback();
        }
    }
}

impl Queryable for Transaction<'_> {
    fn run(&self, sql: &str, params: Vec<Value>) -> Result<usize> {
        match self.open()? {
            TxInner::Sqlite(tx) => sqlite_run(tx, sql, params),
            TxInner::Postgres(pg) => count(self.changes, pg.run(sql, params)),
        }
    }

    fn fetch(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        match self.open()? {
            TxInner::Sqlite(tx) => sqlite_fetch(tx, sql, params),
            TxInner::Postgres(pg) => pg.fetch(sql, params),
        }
    }

    fn execute_batch(&self, sql: &str) -> Result<()> {
        match self.open()? {
            TxInner::Sqlite(tx) => Ok(tx.execute_batch(sql)?),
            TxInner::Postgres(pg) => pg.batch(sql),
        }
    }
}

// ---- SQLite ----

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(text) => ValueRef::Text(text.as_bytes()),
            Value::Blob(bytes) => ValueRef::Blob(bytes),
        }))
    }
}

fn sqlite_run(conn: &rusqlite::Connection, sql: &str, params: Vec<Value>) -> Result<usize> {
    Ok(conn
        .prepare_cached(sql)?
        .execute(rusqlite::params_from_iter(params))?)
}

fn sqlite_fetch(conn: &rusqlite::Connection, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
    use rusqlite::types::ValueRef;
    let mut stmt = conn.prepare_cached(sql)?;
    let columns = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(columns);
        for column in 0..columns {
            values.push(match row.get_ref(column)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(i) => Value::Integer(i),
                ValueRef::Real(f) => Value::Real(f),
                ValueRef::Text(bytes) => {
                    Value::Text(String::from_utf8(bytes.to_vec()).map_err(|e| {
                        SqlError::Column {
                            column,
                            reason: format!("text is not UTF-8: {e}"),
                        }
                    })?)
                }
                ValueRef::Blob(bytes) => Value::Blob(bytes.to_vec()),
            });
        }
        out.push(Row { values });
    }
    Ok(out)
}

// ---- PostgreSQL ----

/// A PostgreSQL connection, driven by a thread of its own that owns the client
/// ([`PgWorker`]).
struct PgConn {
    jobs: mpsc::SyncSender<PgJob>,
}

/// What the connection's thread is asked to do; each job carries where to answer.
enum PgJob {
    Run(String, Vec<Value>, mpsc::SyncSender<Result<usize>>),
    Fetch(String, Vec<Value>, mpsc::SyncSender<Result<Vec<Row>>>),
    Batch(String, mpsc::SyncSender<Result<()>>),
    /// A session setting, run now and again on every new session.
    Setup(String, mpsc::SyncSender<Result<()>>),
    Begin(mpsc::SyncSender<Result<()>>),
    Commit(mpsc::SyncSender<Result<()>>),
    Rollback(mpsc::SyncSender<Result<()>>),
}

/// The thread's side: the client, reconnected when its session ended (a restarted database,
/// a cut connection, a terminated backend) — but never in the middle of a transaction, whose
/// later statements would otherwise run outside it: those fail until the transaction ends.
struct PgWorker {
    config: postgres::Config,
    /// TLS unless the URL says `sslmode=disable`.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    client: Option<postgres::Client>,
    statements: HashMap<String, postgres::Statement>,
    setup: Vec<String>,
    in_transaction: bool,
}

impl PgWorker {
    fn session(&mut self) -> Result<&mut postgres::Client> {
        let closed = self.client.as_ref().is_none_or(postgres::Client::is_closed);
        if closed {
            if self.in_transaction {
                return Err(SqlError::SessionLost);
            }
            self.statements.clear();
            self.client = None;
            let mut client = match &self.tls {
                Some(tls) => self.config.connect(tls.clone())?,
                None => self.config.connect(postgres::NoTls)?,
            };
            for setting in &self.setup {
                client.batch_execute(setting)?;
            }
            tracing::info!("store: connected to PostgreSQL");
            self.client = Some(client);
        }
        self.client.as_mut().ok_or(SqlError::Disconnected)
    }

    fn prepared(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(stmt) = self.statements.get(sql) {
            return Ok(stmt.clone());
        }
        let stmt = self.session()?.prepare(&postgres_placeholders(sql))?;
        if self.statements.len() >= PG_STATEMENT_CACHE_MAX {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }

    fn handle(&mut self, job: PgJob) {
        match job {
            PgJob::Run(sql, params, reply) => {
                let result = self.prepared(&sql).and_then(|stmt| {
                    let refs = pg_refs(&params);
                    Ok(self.session()?.execute(&stmt, &refs)? as usize)
                });
                let _ = reply.send(result);
            }
            PgJob::Fetch(sql, params, reply) => {
                let result = self.prepared(&sql).and_then(|stmt| {
                    let refs = pg_refs(&params);
                    let rows = self.session()?.query(&stmt, &refs)?;
                    rows.iter().map(pg_row).collect()
                });
                let _ = reply.send(result);
            }
            PgJob::Batch(sql, reply) => {
                let result = self
                    .session()
                    .and_then(|client| Ok(client.batch_execute(&sql)?));
                let _ = reply.send(result);
            }
            PgJob::Setup(sql, reply) => {
                let result = self
                    .session()
                    .and_then(|client| Ok(client.batch_execute(&sql)?));
                if result.is_ok() {
                    self.setup.push(sql);
                }
                let _ = reply.send(result);
            }
            PgJob::Begin(reply) => {
                let result = self
                    .session()
                    .and_then(|client| Ok(client.batch_execute("BEGIN")?));
                self.in_transaction = result.is_ok();
                let _ = reply.send(result);
            }
            PgJob::Commit(reply) => {
                let result = self
                    .session()
                    .and_then(|client| Ok(client.batch_execute("COMMIT")?));
                self.in_transaction = false;
                let _ = reply.send(result);
            }
            PgJob::Rollback(reply) => {
                let lost = self.client.as_ref().is_none_or(postgres::Client::is_closed);
                // A lost session rolled its transaction back already.
                let result = if lost {
                    Ok(())
                } else {
                    self.session()
                        .and_then(|client| Ok(client.batch_execute("ROLLBACK")?))
                };
                self.in_transaction = false;
                let _ = reply.send(result);
            }
        }
    }
}

impl PgConn {
    fn connect(url: &str) -> Result<Self> {
        let (url, ca_file) = tls_settings(url);
        let mut config: postgres::Config = url.parse()?;
        // Certificates are always verified (rustls): `require`, `verify-ca` and `verify-full`
        // alike; `prefer` (the default) uses TLS when the server offers it.
        let tls = match config.get_ssl_mode() {
            postgres::config::SslMode::Disable => None,
            _ => Some(tokio_postgres_rustls::MakeRustlsConnect::new(
                crate::tls::client_config(ca_file.as_deref().map(std::path::Path::new))
                    .map(|c| (*c).clone())
                    .map_err(SqlError::Tls)?,
            )),
        };
        if config.get_application_name().is_none() {
            config.application_name(&format!("failsmall pid {}", std::process::id()));
        }
        // A database that stops answering (a partition that drops packets) fails calls
        // within bounded time instead of holding the store forever; a URL may say otherwise.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(PG_CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(PG_TCP_USER_TIMEOUT);
        }
        config.keepalives(true);
        config.keepalives_idle(PG_KEEPALIVE_IDLE);
        let mut worker = PgWorker {
            config,
            tls,
            client: None,
            statements: HashMap::new(),
            setup: Vec::new(),
            in_transaction: false,
        };
        // The first session is opened here, so a wrong URL fails the start, not a request.
        worker.session()?;
        let (jobs, queue) = mpsc::sync_channel::<PgJob>(PG_QUEUE_MAX);
        std::thread::Builder::new()
            .name("failsmall-postgres".to_owned())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    worker.handle(job);
                }
            })
            .map_err(|e| SqlError::Thread(e.to_string()))?;
        Ok(Self { jobs })
    }

    fn call<T>(&self, job: impl FnOnce(mpsc::SyncSender<Result<T>>) -> PgJob) -> Result<T> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .send(job(reply))
            .map_err(|_| SqlError::Disconnected)?;
        answer.recv().map_err(|_| SqlError::Disconnected)?
    }

    fn run(&self, sql: &str, params: Vec<Value>) -> Result<usize> {
        self.call(|reply| PgJob::Run(sql.to_owned(), params, reply))
    }

    fn fetch(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        self.call(|reply| PgJob::Fetch(sql.to_owned(), params, reply))
    }

    fn batch(&self, sql: &str) -> Result<()> {
        self.call(|reply| PgJob::Batch(sql.to_owned(), reply))
    }

    fn setup(&self, sql: &str) -> Result<()> {
        self.call(|reply| PgJob::Setup(sql.to_owned(), reply))
    }

    fn begin(&self) -> Result<()> {
        self.call(PgJob::Begin)
    }

    fn commit(&self) -> Result<()> {
        self.call(PgJob::Commit)
    }

    fn rollback(&self) -> Result<()> {
        self.call(PgJob::Rollback)
    }
}

fn pg_refs(params: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| p as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

fn pg_row(row: &postgres::Row) -> Result<Row> {
    use postgres::types::Type;
    let mut values = Vec::with_capacity(row.len());
    for (column, col) in row.columns().iter().enumerate() {
        let ty = col.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(column)?
                .map_or(Value::Null, Value::Integer)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(column)?
                .map_or(Value::Null, |i| Value::Integer(i64::from(i)))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(column)?
                .map_or(Value::Null, |i| Value::Integer(i64::from(i)))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(column)?
                .map_or(Value::Null, |b| Value::Integer(i64::from(b)))
        } else if *ty == Type::FLOAT8 {
            row.try_get::<_, Option<f64>>(column)?
                .map_or(Value::Null, Value::Real)
        } else if *ty == Type::FLOAT4 {
            row.try_get::<_, Option<f32>>(column)?
                .map_or(Value::Null, |f| Value::Real(f64::from(f)))
        } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(ty) {
            row.try_get::<_, Option<String>>(column)?
                .map_or(Value::Null, Value::Text)
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(column)?
                .map_or(Value::Null, Value::Blob)
        } else {
            return Err(SqlError::Column {
                column,
                reason: format!(
                    "PostgreSQL type {ty} is not read by the store (cast it to BIGINT, TEXT or BYTEA)"
                ),
            });
        };
        values.push(value);
    }
    Ok(Row { values })
}

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::{IsNull, Type};
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Integer(i) => {
                if *ty == Type::INT8 {
                    i.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (*i != 0).to_sql(ty, out)
                } else if *ty == Type::FLOAT8 {
                    (*i as f64).to_sql(ty, out)
                } else if [Type::TEXT, Type::VARCHAR].contains(ty) {
                    i.to_string().as_str().to_sql(ty, out)
                } else {
                    Err(
                        format!("an integer parameter cannot be sent as PostgreSQL type {ty}")
                            .into(),
                    )
                }
            }
            Value::Real(f) => f.to_sql(ty, out),
            Value::Text(text) => text.as_str().to_sql(ty, out),
            Value::Blob(bytes) => bytes.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// The URL as the `postgres` client reads it, and the CA file its `sslrootcert` names: that
/// setting, and the `verify-ca`/`verify-full` modes (certificates are always verified here, so
/// they mean `require`), are libpq's and not the client's.
fn tls_settings(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut ca_file = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sslrootcert", path)) => ca_file = Some(path.to_owned()),
            Some(("sslmode", "verify-ca" | "verify-full")) => {
                kept.push("sslmode=require".to_owned())
            }
            _ => kept.push(pair.to_owned()),
        }
    }
    if kept.is_empty() {
        (base.to_owned(), ca_file)
    } else {
        (format!("{base}?{}", kept.join("&")), ca_file)
    }
}

/// `sql` with its `?N` and `?` placeholders as PostgreSQL's `$N` (quoted text left alone).
pub fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut quoted = false;
    let mut next = 0u32;
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    digits.push(d);
                    chars.next();
                }
                if digits.is_empty() {
                    next += 1;
                    digits = next.to_string();
                }
                out.push('$');
                out.push_str(&digits);
            }
            _ => out.push(c),
        }
    }
    out
}

/// A schema migration written for SQLite, as PostgreSQL runs it: row ids become identity
/// columns, every integer is 64-bit, `BLOB` is `BYTEA`, booleans are stored as integers
/// (as SQLite stores them, so one SQL text compares them the same way).
pub fn postgres_ddl(sql: &str) -> String {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let text = sql.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER PRIMARY KEY");
    let text = text.replace(
        "INTEGER PRIMARY KEY",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    );
    let mut out = String::with_capacity(text.len());
    for token in text.split_inclusive(|c: char| !is_word(c)) {
        let (word, tail) = token.split_at(token.find(|c: char| !is_word(c)).unwrap_or(token.len()));
        out.push_str(match word {
            "INTEGER" | "BOOLEAN" => "BIGINT",
            "BLOB" => "BYTEA",
            "REAL" => "DOUBLE PRECISION",
            other => other,
        });
        out.push_str(tail);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_quotes() {
        assert_eq!(
            postgres_placeholders("SELECT a FROM t WHERE b = ?2 AND c = ?1 AND d = '?'"),
            "SELECT a FROM t WHERE b = $2 AND c = $1 AND d = '?'"
        );
        assert_eq!(
            postgres_placeholders("INSERT INTO t VALUES (?, ?)"),
            "INSERT INTO t VALUES ($1, $2)"
        );
    }

    #[test]
    fn libpq_tls_settings_are_read_off_the_url() {
        assert_eq!(
            tls_settings(
                "postgres://u@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x"
            ),
            (
                "postgres://u@h/db?sslmode=require&application_name=x".to_owned(),
                Some("/etc/ca.pem".to_owned())
            )
        );
        assert_eq!(
            tls_settings("postgres://u@h/db?sslrootcert=/ca.pem"),
            ("postgres://u@h/db".to_owned(), Some("/ca.pem".to_owned()))
        );
        assert_eq!(
            tls_settings("postgres://u@h/db"),
            ("postgres://u@h/db".to_owned(), None)
        );
    }

    #[test]
    fn ddl_is_widened_for_postgres() {
        assert_eq!(
            postgres_ddl(
                "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL, b BLOB, ok BOOLEAN, INTEGERS TEXT)"
            ),
            "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT NOT NULL, b BYTEA, ok BIGINT, INTEGERS TEXT)"
        );
        assert_eq!(
            postgres_ddl("CREATE TABLE c (id INTEGER PRIMARY KEY CHECK (id = 1))"),
            "CREATE TABLE c (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY CHECK (id = 1))"
        );
    }

    #[test]
    fn sqlite_rows_read_back_as_written() {
        let mut conn = Connection::sqlite(rusqlite::Connection::open_in_memory().unwrap());
        conn.execute_batch("CREATE TABLE t (i BIGINT, s TEXT, b BLOB, n TEXT)")
            .unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
            params![7i64, "seven", vec![7u8], None::<String>],
        )
        .unwrap();
        tx.commit().unwrap();
        let (i, s, b, n): (i64, String, Vec<u8>, Option<String>) = conn
            .query_row("SELECT i, s, b, n FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .unwrap();
        assert_eq!((i, s.as_str(), b, n), (7, "seven", vec![7], None));
        assert!(matches!(
            conn.query_row("SELECT i FROM t WHERE i = 8", [], |r| r.get::<_, i64>(0))
                .optional(),
            Ok(None)
        ));
        let dropped = conn.transaction().unwrap();
        dropped.execute("DELETE FROM t", []).unwrap();
        drop(dropped);
        assert_eq!(
            conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            1
        );
    }
}
