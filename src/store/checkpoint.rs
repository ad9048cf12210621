//! WAL checkpoints mostly off the write path, for the SQLite backend.
//!
//! SQLite's default checkpoints the WAL inside the commit that crosses
//! 1,000 pages: that commit then also copies those pages into the database
//! file and fsyncs it (several milliseconds), and every issuance waiting on
//! the group commit waits with it. Here a thread of its own, on a second
//! connection, runs a `PASSIVE` checkpoint every 100 ms, which never blocks
//! the writer (WAL lets a checkpoint and a write run side by side) and
//! copies nearly every page. A passive checkpoint under a steady stream of
//! writes never reaches the WAL's end, though, and the WAL only starts over
//! from its beginning once one has: so the writer keeps an automatic
//! checkpoint of its own, at `RESTART_FRAMES` instead of 1,000 frames. That
//! one, in the writer's commit, copies only the few pages the background
//! thread has not, reaches the end, and the next write starts the WAL over:
//! the WAL stays near 16 MiB, and page reads, which look through the WAL's
//! index first, stay fast.
//!
//! The thread ends when the store that started it is dropped.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::StoreResult;
use super::sqlite::sqlite_err;

/// How often the WAL is looked at.
const INTERVAL: Duration = Duration::from_millis(100);

/// The WAL's length at which the writer's own checkpoint finishes what the
/// background one copied, so that the next write starts the WAL over.
const RESTART_FRAMES: i64 = 4096;

/// Keeps the checkpointing thread alive; dropping it stops the thread and
/// waits for it to close its connection.
pub(super) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Checkpointer {
    /// Moves `writer`'s automatic checkpoint to `RESTART_FRAMES` and starts
    /// checkpointing `path` from a connection of its own.
    pub(super) fn start(writer: &Connection, path: &Path) -> StoreResult<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let own = Connection::open_with_flags(path, flags).map_err(sqlite_err)?;
        own.busy_timeout(Duration::from_secs(5)).map_err(sqlite_err)?;
        // The checkpoint's own fsync of the database file keeps its pages
        // durable before the WAL frames they came from are reused.
        own.pragma_update(None, "synchronous", "FULL").map_err(sqlite_err)?;
        writer.pragma_update(None, "wal_autocheckpoint", RESTART_FRAMES).map_err(sqlite_err)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(&own, &stopped))
            .map_err(|e| super::StoreError::Backend(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

fn run(conn: &Connection, stopped: &mpsc::Receiver<()>) {
    // `conn` is closed when this returns, before the writer's connection.
    loop {
        match stopped.recv_timeout(INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        // Copies what it can without waiting for anyone; with nothing new in
        // the WAL it only reads the WAL's index.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed; the next one retries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_database(dir: &Path) -> (std::path::PathBuf, Connection) {
        let db = dir.join("t.db");
        let writer = Connection::open(&db).unwrap();
        writer.pragma_update(None, "journal_mode", "WAL").unwrap();
        writer.pragma_update(None, "synchronous", "OFF").unwrap();
        writer.execute_batch("CREATE TABLE t (b BLOB NOT NULL)").unwrap();
        (db, writer)
    }

    fn rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn pages_reach_the_database_file_without_a_checkpoint_in_any_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (db, writer) = wal_database(dir.path());
        let _checkpoints = Checkpointer::start(&writer, &db).unwrap();
        // Far fewer pages than the writer's own checkpoint waits for.
        for _ in 0..200 {
            writer.execute("INSERT INTO t (b) VALUES (?1)", [&vec![7u8; 3000]]).unwrap();
        }
        // The database file alone, without its WAL, holds them once the
        // background thread has looked.
        let copy = dir.path().join("copy.db");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            std::fs::copy(&db, &copy).unwrap();
            let found = Connection::open(&copy).and_then(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)));
            if found.ok() == Some(200i64) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the database file never received the pages");
            std::thread::sleep(INTERVAL / 2);
        }
    }

    #[test]
    fn the_wal_starts_over_under_a_steady_stream_of_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (db, writer) = wal_database(dir.path());
        let _checkpoints = Checkpointer::start(&writer, &db).unwrap();
        // Ten times the restart length, one page per transaction, without a
        // pause in which a passive checkpoint could reach the WAL's end.
        let page = vec![7u8; 3000];
        for _ in 0..(10 * RESTART_FRAMES) {
            writer.execute("INSERT INTO t (b) VALUES (?1)", [&page]).unwrap();
        }
        let frames = std::fs::metadata(db.with_extension("db-wal")).unwrap().len() / (4096 + 24);
        assert!(rows(&writer) == 10 * RESTART_FRAMES);
        // Unbounded, it would hold all ten times the restart length; a writer
        // whose checkpoint meets the background one mid-copy retries at its
        // next commit, so the bound has room for that.
        assert!(frames < 5 * RESTART_FRAMES as u64, "the WAL grew to {frames} frames");
    }
}
