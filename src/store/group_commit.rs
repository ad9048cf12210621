//! Group commit for the SQLite backend: concurrent issuance records share one
//! transaction and one fsync, so durable issuance scales with concurrency
//! instead of being capped by the disk's fsync rate.
//!
//! Each submission runs under its own savepoint, so one failing record (a
//! duplicate serial) fails alone; a failing commit fails every record of the
//! batch. A submission whose first statement changes no row (an insert its
//! condition refused) is rolled back alone and answered `false`. Nobody is
//! answered before the commit that holds their record.

use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::sqlite::{exec, sqlite_err};
use super::statements::Stmt;
use super::{StoreError, StoreResult};

/// Most records in one transaction.
const MAX_BATCH: usize = 256;

struct Pending {
    stmts: Vec<Stmt>,
    done: oneshot::Sender<StoreResult<bool>>,
}

pub(super) struct GroupCommit {
    /// `None` once dropping: the writer sees the queue close.
    queue: Option<mpsc::UnboundedSender<Pending>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the committing thread. It is an OS thread of its own, not a
    /// task: every issuance waits on it, so it must not queue behind the
    /// requests that feed it on the runtime's workers. Dropping the
    /// `GroupCommit` waits for it to commit what it holds and end, so the
    /// connection can be closed (and the WAL folded in) right after.
    pub(super) fn start(conn: Arc<Mutex<Connection>>) -> StoreResult<Self> {
        let (queue, rx) = mpsc::unbounded_channel();
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(&conn, rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the SQLite writer: {e}")))?;
        Ok(Self { queue: Some(queue), writer: Some(writer) })
    }

    /// Writes `stmts` in the next batch; returns once that batch is durable:
    /// `true`, or `false` when the first statement changed no row and nothing
    /// of the submission was kept.
    pub(super) async fn submit(&self, stmts: Vec<Stmt>) -> StoreResult<bool> {
        let (done, result) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the SQLite writer has stopped".into());
        self.queue.as_ref().ok_or_else(stopped)?.send(Pending { stmts, done }).map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn run(conn: &Mutex<Connection>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        drain(&mut rx, &mut batch);
        let results = commit(&mut conn.lock(), &batch);
        for (p, r) in batch.into_iter().zip(results) {
            let _ = p.done.send(r);
        }
    }
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Pending>, batch: &mut Vec<Pending>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => return,
        }
    }
}

/// One transaction for the whole batch; one result per submission.
fn commit(conn: &mut Connection, batch: &[Pending]) -> Vec<StoreResult<bool>> {
    let fail_all = |e: StoreError| batch.iter().map(|_| Err(clone_err(&e))).collect();
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_all(sqlite_err(e)),
    };
    let mut results = Vec::with_capacity(batch.len());
    for p in batch {
        let one = tx.savepoint().map_err(sqlite_err).and_then(|sp| {
            let Some((first, rest)) = p.stmts.split_first() else { return Ok(true) };
            if exec(&sp, first)? == 0 {
                // Dropping the savepoint rolls it back.
                return Ok(false);
            }
            rest.iter().try_for_each(|s| exec(&sp, s).map(drop))?;
            sp.commit().map_err(sqlite_err)?;
            Ok(true)
        });
        results.push(one);
    }
    match tx.commit() {
        Ok(()) => results,
        Err(e) => fail_all(sqlite_err(e)),
    }
}

fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Damaged(m) => StoreError::Damaged(m.clone()),
        other => StoreError::Backend(other.to_string()),
    }
}
