//! The writer's VFS: the default one, but with a commit's log writes gathered into one.
//!
//! SQLite writes a commit into its log a frame at a time, a 24-byte header and then a page, two
//! `pwrite` calls each. A small commit touches a page of every b-tree its rows go into (30 or so
//! for the contract's tables and indexes), so in durable mode, where commits are small and many,
//! those calls and the kernel's work per call were a third of the writer's time. Here the log's
//! writes are gathered in memory and written together when the commit frame comes.
//!
//! What other connections see is unchanged: SQLite publishes a commit (the wal-index header) only
//! after writing its commit frame, and from a commit frame's header on, writes go straight to
//! the file until the next transaction's first frame. Reading, syncing, truncating, sizing or
//! closing the log writes what is gathered first, so SQLite never sees the file behind its own
//! writes; so do a barrier on the wal-index and the release of its write lock (the log is
//! linked to its database file for that), so that nothing gathered, a rolled-back transaction's
//! frames included, is written once another connection may write the log. A process that dies
//! with writes gathered dies before their commit was published: as if it had died a moment
//! earlier, which SQLite's recovery already handles.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ffi::{CStr, c_int, c_void};
use std::ptr::{null_mut, write};
use std::slice;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name the writer's connection opens its database with.
pub(crate) const NAME: &CStr = c"mcp-metrics-wal";

/// A frame's header; its second word is the database's size in pages after a commit, and zero
/// in every frame but a commit's last.
const FRAME_HEADER: usize = 24;

/// Gathered bytes are written once they reach this much (a large commit's log goes out in
/// pieces of this size).
const MOST_GATHERED: usize = 256 * 1024;

/// The wal-index lock a connection holds while it writes the log (`WAL_WRITE_LOCK` in wal.c).
const WAL_WRITE_LOCK: c_int = 0;

/// The most the default VFS writes in one call.
const LARGEST_WRITE: usize = 0x1_ffff;

/// Registers the VFS (once); the connection that names it gets the default VFS's files, with
/// their log's writes gathered.
pub(crate) fn register() -> rusqlite::Result<()> {
    static REGISTERED: OnceLock<c_int> = OnceLock::new();
    let rc = *REGISTERED.get_or_init(|| unsafe {
        let default = ffi::sqlite3_vfs_find(std::ptr::null());
        if default.is_null() {
            return ffi::SQLITE_ERROR;
        }
        let _ = DEFAULT.set(DefaultVfs(default));
        // Everything but opening a file is the default VFS's own, fields included.
        let mut vfs = *default;
        vfs.szOsFile = size_of::<File>() as c_int;
        vfs.zName = NAME.as_ptr();
        vfs.pNext = null_mut();
        vfs.xOpen = Some(open);
        ffi::sqlite3_vfs_register(Box::leak(Box::new(vfs)), 0)
    });
    match rc {
        ffi::SQLITE_OK => Ok(()),
        rc => Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None)),
    }
}

struct DefaultVfs(*mut ffi::sqlite3_vfs);
// SAFETY: SQLite's VFS objects are process-wide and never freed once registered.
unsafe impl Send for DefaultVfs {}
unsafe impl Sync for DefaultVfs {}

static DEFAULT: OnceLock<DefaultVfs> = OnceLock::new();

/// What SQLite allocates for each file: the default VFS's file beside it, and for the log, the
/// writes gathered so far.
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    inner: *mut ffi::sqlite3_file,
    inner_layout: Layout,
    gathered: Option<Gathered>,
    /// A database file's log, or a log's database file, while both are open: the wal-index
    /// (its locks and barriers) is the database file's, and what is gathered is the log's.
    linked: *mut File,
}

/// Writes held back until a commit frame (or a read, sync, ...) needs them in the file. Pure,
/// so that its rules are tested without SQLite.
#[derive(Debug, Default)]
pub(crate) struct Gathered {
    start: i64,
    bytes: Vec<u8>,
    /// The last frame header was a commit's: what follows it (its page, any padding SQLite adds
    /// before a sync, headers rewritten to fix checksums) goes out at once, until the next
    /// transaction's first frame.
    after_commit: bool,
}

impl Gathered {
    /// Takes a write at `offset`; `out` writes to the file, returning an SQLite result code.
    pub(crate) fn write(
        &mut self,
        offset: i64,
        data: &[u8],
        out: &mut impl FnMut(i64, &[u8]) -> c_int,
    ) -> c_int {
        let end = self.start + self.bytes.len() as i64;
        if self.bytes.is_empty() {
            self.start = offset;
            self.bytes.extend_from_slice(data);
        } else if offset == end {
            self.bytes.extend_from_slice(data);
        } else if offset >= self.start && offset + data.len() as i64 <= end {
            // A frame of this commit written again (SQLite rewrites a page it changed twice).
            let at = (offset - self.start) as usize;
            self.bytes[at..at + data.len()].copy_from_slice(data);
        } else {
            let rc = self.flush(out);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            self.start = offset;
            self.bytes.extend_from_slice(data);
        }
        if data.len() == FRAME_HEADER {
            self.after_commit = data[4..8] != [0; 4];
        }
        if self.after_commit || self.bytes.len() >= MOST_GATHERED {
            return self.flush(out);
        }
        ffi::SQLITE_OK
    }

    /// Writes what is gathered. On failure it is kept, to be written again or dropped (writing
    /// the same bytes twice is harmless).
    pub(crate) fn flush(&mut self, out: &mut impl FnMut(i64, &[u8]) -> c_int) -> c_int {
        if self.bytes.is_empty() {
            return ffi::SQLITE_OK;
        }
        let rc = out(self.start, &self.bytes);
        if rc == ffi::SQLITE_OK {
            self.bytes.clear();
        }
        rc
    }

    /// Drops what is gathered.
    pub(crate) fn drop_gathered(&mut self) {
        self.bytes.clear();
    }
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    unsafe {
        let file = file.cast::<File>();
        (*file).base.pMethods = std::ptr::null();
        let Some(DefaultVfs(default)) = DEFAULT.get() else {
            return ffi::SQLITE_ERROR;
        };
        let Ok(layout) = Layout::from_size_align((**default).szOsFile.max(1) as usize, 16) else {
            return ffi::SQLITE_NOMEM;
        };
        let inner = alloc_zeroed(layout).cast::<ffi::sqlite3_file>();
        if inner.is_null() {
            return ffi::SQLITE_NOMEM;
        }
        let Some(open_inner) = (**default).xOpen else {
            dealloc(inner.cast(), layout);
            return ffi::SQLITE_ERROR;
        };
        let rc = open_inner(*default, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            // A file that failed to open may still need closing (SQLite's rule for xOpen).
            if let Some(close) = (*inner).pMethods.as_ref().and_then(|m| m.xClose) {
                close(inner);
            }
            dealloc(inner.cast(), layout);
            return rc;
        }
        let is_log = flags & ffi::SQLITE_OPEN_WAL != 0;
        write(
            file,
            File {
                base: ffi::sqlite3_file { pMethods: &METHODS },
                inner,
                inner_layout: layout,
                gathered: is_log.then(Gathered::default),
                linked: null_mut(),
            },
        );
        if is_log {
            let database = ffi::sqlite3_database_file_object(name);
            if !database.is_null() && std::ptr::eq((*database).pMethods, &METHODS) {
                let database = database.cast::<File>();
                (*database).linked = file;
                (*file).linked = database;
            }
        }
        ffi::SQLITE_OK
    }
}

/// The default VFS's file and its methods, and what is gathered for it.
unsafe fn parts<'a>(
    file: *mut ffi::sqlite3_file,
) -> (
    *mut ffi::sqlite3_file,
    &'a ffi::sqlite3_io_methods,
    Option<&'a mut Gathered>,
) {
    unsafe {
        let file = &mut *file.cast::<File>();
        (file.inner, &*(*file.inner).pMethods, file.gathered.as_mut())
    }
}

/// Writes what is gathered for `file`, if anything. A failure is an I/O error whatever its
/// cause, which SQLite answers by rolling the whole transaction back.
unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let (inner, methods, gathered) = parts(file);
        let rc = match gathered {
            Some(gathered) => {
                gathered.flush(&mut |offset, bytes| write_inner(inner, methods, offset, bytes))
            }
            None => ffi::SQLITE_OK,
        };
        if rc == ffi::SQLITE_OK {
            rc
        } else {
            ffi::SQLITE_IOERR_WRITE
        }
    }
}

/// The log linked to a database file, while it is open.
unsafe fn linked_log(database: *mut ffi::sqlite3_file) -> Option<*mut ffi::sqlite3_file> {
    unsafe {
        let database = &*database.cast::<File>();
        (!database.linked.is_null() && database.gathered.is_none())
            .then(|| database.linked.cast::<ffi::sqlite3_file>())
    }
}

/// Writes `bytes` at `offset` through the default VFS, in pieces it takes whole: the unix VFS
/// masks a write's length to 17 bits (SQLite itself never writes more than a page), so a longer
/// write would come out short and read as a full disk.
unsafe fn write_inner(
    inner: *mut ffi::sqlite3_file,
    methods: &ffi::sqlite3_io_methods,
    offset: i64,
    bytes: &[u8],
) -> c_int {
    let Some(write) = methods.xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let mut offset = offset;
    for piece in bytes.chunks(LARGEST_WRITE) {
        let rc = unsafe { write(inner, piece.as_ptr().cast(), piece.len() as c_int, offset) };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        offset += piece.len() as i64;
    }
    ffi::SQLITE_OK
}

/// Forwards a call to the default VFS's file, writing what is gathered first.
macro_rules! flushed_then {
    ($file:ident, $method:ident ( $($arg:expr),* )) => {{
        let rc = flush($file);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let (inner, methods, _) = parts($file);
        match methods.$method {
            Some(method) => method(inner $(, $arg)*),
            None => ffi::SQLITE_IOERR,
        }
    }};
}

/// Forwards a call to the default VFS's file as it is.
macro_rules! forwarded {
    ($file:ident, $method:ident ( $($arg:expr),* ), $missing:expr) => {{
        let (inner, methods, _) = parts($file);
        match methods.$method {
            Some(method) => method(inner $(, $arg)*),
            None => $missing,
        }
    }};
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write_gathered),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let flushed = flush(file);
        let closed = forwarded!(file, xClose(), ffi::SQLITE_OK);
        let this = file.cast::<File>();
        if !(*this).linked.is_null() {
            (*(*this).linked).linked = null_mut();
        }
        dealloc((*this).inner.cast(), (*this).inner_layout);
        std::ptr::drop_in_place(this);
        (*file).pMethods = std::ptr::null();
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buffer: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    unsafe { flushed_then!(file, xRead(buffer, amount, offset)) }
}

unsafe extern "C" fn write_gathered(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    unsafe {
        let (inner, methods, gathered) = parts(file);
        let data = slice::from_raw_parts(data.cast::<u8>(), amount.max(0) as usize);
        match gathered {
            Some(gathered) => gathered.write(offset, data, &mut |offset, bytes| {
                write_inner(inner, methods, offset, bytes)
            }),
            None => write_inner(inner, methods, offset, data),
        }
    }
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    unsafe { flushed_then!(file, xTruncate(size)) }
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    unsafe { flushed_then!(file, xSync(flags)) }
}

unsafe extern "C" fn file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    unsafe { flushed_then!(file, xFileSize(size)) }
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    unsafe { forwarded!(file, xLock(level), ffi::SQLITE_IOERR_LOCK) }
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    unsafe { forwarded!(file, xUnlock(level), ffi::SQLITE_IOERR_UNLOCK) }
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    unsafe {
        forwarded!(
            file,
            xCheckReservedLock(out),
            ffi::SQLITE_IOERR_CHECKRESERVEDLOCK
        )
    }
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    argument: *mut c_void,
) -> c_int {
    unsafe { flushed_then!(file, xFileControl(op, argument)) }
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe { forwarded!(file, xSectorSize(), 4096) }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe { forwarded!(file, xDeviceCharacteristics(), 0) }
}

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    unsafe {
        forwarded!(
            file,
            xShmMap(region, size, extend, out),
            ffi::SQLITE_IOERR_SHMMAP
        )
    }
}

unsafe extern "C" fn shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    count: c_int,
    flags: c_int,
) -> c_int {
    unsafe {
        if offset == WAL_WRITE_LOCK
            && flags == ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_EXCLUSIVE
            && let Some(log) = linked_log(file)
        {
            // The end of a write transaction: once this lock is released another connection may
            // write the log, so nothing gathered may be written after it. After a commit nothing
            // is; after a rollback its frames are, past the last commit, where writing them
            // harms nothing while the lock is held, and dropping them loses nothing.
            let _ = flush(log);
            if let (_, _, Some(gathered)) = parts(log) {
                gathered.drop_gathered();
            }
        }
        forwarded!(
            file,
            xShmLock(offset, count, flags),
            ffi::SQLITE_IOERR_SHMLOCK
        )
    }
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    unsafe {
        // SQLite puts a barrier between the two copies of the wal-index header it publishes:
        // anything the rules above left gathered is in the file before readers take the header.
        // A failure keeps the bytes, and the log's next read, sync or write reports it.
        if let Some(log) = linked_log(file) {
            let _ = flush(log);
        }
        forwarded!(file, xShmBarrier(), ())
    }
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    unsafe { forwarded!(file, xShmUnmap(delete), ffi::SQLITE_OK) }
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    unsafe {
        let rc = flush(file);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        forwarded!(file, xFetch(offset, amount, out), {
            *out = null_mut();
            ffi::SQLITE_OK
        })
    }
}

unsafe extern "C" fn unfetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    page: *mut c_void,
) -> c_int {
    unsafe { forwarded!(file, xUnfetch(offset, page), ffi::SQLITE_OK) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file image that records each write it is given.
    #[derive(Default)]
    struct Image {
        bytes: Vec<u8>,
        writes: usize,
    }

    impl Image {
        fn write(&mut self, offset: i64, data: &[u8]) -> c_int {
            let end = offset as usize + data.len();
            if self.bytes.len() < end {
                self.bytes.resize(end, 0);
            }
            self.bytes[offset as usize..end].copy_from_slice(data);
            self.writes += 1;
            ffi::SQLITE_OK
        }
    }

    fn header(commit_pages: u32) -> Vec<u8> {
        let mut header = vec![7u8; FRAME_HEADER];
        header[4..8].copy_from_slice(&commit_pages.to_be_bytes());
        header
    }

    /// Frames of a commit written the way SQLite writes them: a header, then a page.
    fn commit(gathered: &mut Gathered, image: &mut Image, first_offset: i64, frames: u32) -> i64 {
        let page = 512;
        let mut offset = first_offset;
        for frame in 0..frames {
            let last = frame + 1 == frames;
            let mut out = |o, b: &[u8]| image.write(o, b);
            assert_eq!(
                gathered.write(offset, &header(if last { 9 } else { 0 }), &mut out),
                0
            );
            offset += FRAME_HEADER as i64;
            let data = vec![frame as u8; page];
            assert_eq!(gathered.write(offset, &data, &mut out), 0);
            offset += page as i64;
        }
        offset
    }

    #[test]
    fn a_commit_is_in_the_file_once_its_last_frame_is_written() {
        let (mut gathered, mut image) = (Gathered::default(), Image::default());
        let end = commit(&mut gathered, &mut image, 32, 30);
        assert_eq!(
            image.bytes.len() as i64,
            end,
            "the whole commit is in the file"
        );
        assert!(gathered.bytes.is_empty());
        // Everything up to the commit frame's header in one write, its page in another.
        assert_eq!(image.writes, 2);
    }

    #[test]
    fn frames_of_an_unfinished_commit_wait_until_something_needs_them() {
        let (mut gathered, mut image) = (Gathered::default(), Image::default());
        let mut out = |o, b: &[u8]| image.write(o, b);
        gathered.write(32, &header(0), &mut out);
        gathered.write(56, &[1; 512], &mut out);
        assert_eq!(image.writes, 0);
        assert_eq!(gathered.flush(&mut |o, b| image.write(o, b)), 0);
        assert_eq!(image.writes, 1);
        assert_eq!(&image.bytes[56..], &[1; 512][..]);
    }

    /// Whatever the order of writes, the file ends as if each had been written at once.
    #[test]
    fn rewrites_and_jumps_land_as_written() {
        let writes: Vec<(i64, Vec<u8>)> = vec![
            (32, header(0)),
            (56, vec![1; 512]),
            (568, header(0)),
            (592, vec![2; 512]),
            (56, vec![3; 512]),   // a page of this commit written again
            (40, vec![4; 8]),     // part of a header
            (4000, vec![5; 100]), // past the end: what was gathered goes first
            (10, vec![6; 30]),    // before the start
            (600, vec![7; 8]),
            (568, header(9)), // the last header rewritten, with no page after it
        ];
        let mut direct = Image::default();
        let (mut gathered, mut image) = (Gathered::default(), Image::default());
        for (offset, data) in &writes {
            direct.write(*offset, data);
            gathered.write(*offset, data, &mut |o, b| image.write(o, b));
        }
        assert!(
            gathered.bytes.is_empty(),
            "a commit header leaves nothing gathered"
        );
        assert_eq!(image.bytes, direct.bytes);
    }

    #[test]
    fn a_large_commit_goes_out_in_pieces() {
        let (mut gathered, mut image) = (Gathered::default(), Image::default());
        let mut offset = 32;
        for _ in 0..1000 {
            let mut out = |o, b: &[u8]| image.write(o, b);
            gathered.write(offset, &header(0), &mut out);
            gathered.write(offset + 24, &[1; 1000], &mut out);
            offset += 1024;
            assert!(gathered.bytes.len() < MOST_GATHERED);
        }
        assert!(image.writes >= 1000 * 1024 / MOST_GATHERED - 1);
    }

    #[test]
    fn a_failed_write_is_reported_and_kept_for_the_next_try() {
        let mut gathered = Gathered::default();
        let mut failing = |_, _: &[u8]| ffi::SQLITE_IOERR_WRITE;
        assert_eq!(gathered.write(32, &header(0), &mut failing), 0);
        assert_eq!(
            gathered.write(56, &header(3), &mut failing),
            ffi::SQLITE_IOERR_WRITE
        );
        let mut image = Image::default();
        assert_eq!(gathered.flush(&mut |o, b| image.write(o, b)), 0);
        assert_eq!(image.bytes.len(), 80, "both headers, written once it works");
    }

    /// After a commit's header everything goes out at once (its page, padding split around a
    /// sync, rewritten headers), until the next transaction's first frame header.
    #[test]
    fn what_follows_a_commit_header_goes_out_until_the_next_transaction() {
        let (mut gathered, mut image) = (Gathered::default(), Image::default());
        let mut out = |o, b: &[u8]| image.write(o, b);
        for (offset, data) in [
            (32, header(5)),
            (56, vec![1; 300]), // a page split at a sync point
            (356, vec![2; 212]),
            (568, header(5)), // padding: the commit frame again
            (592, vec![3; 512]),
        ] {
            assert_eq!(gathered.write(offset, &data, &mut out), 0);
            assert!(gathered.bytes.is_empty(), "a write after a commit was held");
        }
        gathered.write(1104, &header(0), &mut out);
        gathered.write(1128, &[4; 512], &mut out);
        assert_eq!(
            gathered.bytes.len(),
            536,
            "the next transaction gathers again"
        );
    }

    /// A connection to `path` through this VFS.
    fn through_the_vfs(path: &std::path::Path) -> rusqlite::Connection {
        register().unwrap();
        rusqlite::Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), NAME)
            .unwrap()
    }

    /// The rows of table `t` and `PRAGMA integrity_check`, read through SQLite's own VFS.
    fn rows_and_integrity(path: &std::path::Path) -> (i64, String) {
        let check = rusqlite::Connection::open(path).unwrap();
        let rows = check
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        let integrity = check
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        (rows, integrity)
    }

    /// A transaction too large for the page cache writes frames early; rolled back, they must
    /// not reach the file once another connection can write the log: here another connection
    /// commits at the same place before the first one closes.
    #[test]
    fn a_rolled_back_transaction_leaves_nothing_to_write_over_another_connections_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE t (x BLOB); \
                 PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .unwrap();
        let writer = through_the_vfs(&path);
        writer
            .execute_batch(
                "PRAGMA cache_size = 10; BEGIN IMMEDIATE; \
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200) \
                 INSERT INTO t SELECT randomblob(1000) FROM n;",
            )
            .unwrap();
        writer.execute_batch("ROLLBACK").unwrap();
        other.execute("INSERT INTO t VALUES (x'01')", []).unwrap();
        drop(writer);
        drop(other);
        assert_eq!(rows_and_integrity(&path), (1, "ok".into()));
    }

    /// What the VFS wrote is the log SQLite meant: a copy of the database and its log, without
    /// the wal-index, is recovered by SQLite's own VFS, which checks every frame's checksum and
    /// keeps only the commits whose frames all check out. Nothing was checkpointed, so every row
    /// comes from the log.
    #[test]
    fn a_log_written_through_the_vfs_recovers_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let writer = through_the_vfs(&path);
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; \
                 PRAGMA cache_size = 50; CREATE TABLE t (x BLOB); \
                 CREATE INDEX t_x ON t (x);",
            )
            .unwrap();
        let mut rows = 0;
        // Small commits, commits that spill past the page cache, and one rolled back.
        for (count, commit) in [
            (1, true),
            (7, true),
            (400, true),
            (300, false),
            (3, true),
            (900, true),
        ] {
            writer
                .execute_batch(&format!(
                    "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
                     WHERE i < {count}) INSERT INTO t SELECT randomblob(300) FROM n; {};",
                    if commit { "COMMIT" } else { "ROLLBACK" }
                ))
                .unwrap();
            if commit {
                rows += count;
            }
        }
        let copy = dir.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        std::fs::copy(&path, copy.join("log.db")).unwrap();
        std::fs::copy(path.with_extension("db-wal"), copy.join("log.db-wal")).unwrap();
        drop(writer);
        assert_eq!(
            rows_and_integrity(&copy.join("log.db")),
            (rows, "ok".into())
        );
    }
}
