//! A JSON-lines file with size-based rotation and a choice of fsync.
//!
//! `decisions.log` grows to `max_bytes`, then becomes `decisions.log.1` (the older ones shift
//! to `.2`, `.3`, … and the oldest beyond `max_files` is deleted) and a new `decisions.log`
//! starts. The hash chain continues across rotations and restarts: on opening, the writer reads
//! the last sealed event of `decisions.log` (or of `decisions.log.1` when the current file is
//! empty) and continues from its hash.
//!
//! Only whole events reach the file. Events wait in memory until the end of their batch and
//! are written together; when that write fails (a full disk, an I/O error) the file is cut
//! back to its last whole event and the events are kept, to be written in order when the file
//! takes them again — so no partial line is left and the chain goes on unbroken. A write a
//! crash cut short is cut back the same way when the log is opened again. Before each
//! write the sink checks that its path still names the file it has open: a log deleted or
//! replaced under it is noticed, and the events go to a new file at the path instead of to a
//! deleted inode.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use arbiter_engine::audit::chain;
use arbiter_engine::audit::index::file_id;

/// When written events are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// Leave it to the operating system.
    Never,
    /// After a batch of queued events (the writer drains the queue, then syncs), at most
    /// every [`BATCH_SYNC_INTERVAL`]: an event reaches the disk within that time.
    #[default]
    Batch,
    /// After every event.
    Always,
}

impl std::str::FromStr for Fsync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(Fsync::Never),
            "batch" => Ok(Fsync::Batch),
            "always" => Ok(Fsync::Always),
            _ => Err(format!("fsync must be never, batch or always, not `{s}`")),
        }
    }
}

/// With [`Fsync::Batch`], the longest an event waits for its sync under steady load.
pub const BATCH_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkConfig {
    pub path: PathBuf,
    /// Rotate when the file would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`.1` … `.N`).
    pub max_files: u32,
    pub fsync: Fsync,
}

impl FileSinkConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_bytes: 100 << 20,
            max_files: 10,
            fsync: Fsync::Batch,
        }
    }
}

pub struct FileSink {
    config: FileSinkConfig,
    file: File,
    /// Bytes of the file that hold whole events.
    size: u64,
    /// Whole events not yet in the file, in order.
    pending: Vec<u8>,
    /// (device, inode) of the open file, to notice it deleted or replaced.
    id: (u64, u64),
    /// Written since the last sync.
    unsynced: bool,
    last_sync: std::time::Instant,
}

/// Events kept while the file refuses them, at most; beyond, the oldest are given up (and
/// counted by the caller), so a disk that stays full cannot exhaust memory.
pub const MAX_PENDING_BYTES: usize = 16 << 20;

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("path", &self.config.path)
            .field("size", &self.size)
            .finish()
    }
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Where the last whole line of `file` (`size` bytes) ends: just after its last newline, 0
/// when it has none.
fn whole_lines_end(file: &mut File, size: u64) -> io::Result<u64> {
    let mut end = size;
    let mut chunk = vec![0u8; 64 << 10];
    while end > 0 {
        let step = end.min(chunk.len() as u64);
        let start = end - step;
        let buf = &mut chunk[..usize::try_from(step).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(buf)?;
        if let Some(i) = buf.iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The `decision_id` a cut-short event names, when its first bytes hold it whole.
fn cut_decision_id(cut: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(cut);
    let rest = text.split_once("\"decision_id\":\"")?.1;
    let id = rest.split_once('"')?.0;
    id.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        .then(|| id.to_string())
}

/// The hash of the last sealed event of a file, reading only its end.
pub fn tail_hash(path: &Path) -> io::Result<Option<String>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut pos = len;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let step = pos.min(64 << 10);
        pos -= step;
        f.seek(SeekFrom::Start(pos))?;
        let mut chunk = vec![0; usize::try_from(step).unwrap_or(0)];
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        // The last complete line ends at the last newline and starts after the one before.
        if let Some(end) = buf.iter().rposition(|b| *b == b'\n') {
            match buf[..end].iter().rposition(|b| *b == b'\n') {
                Some(start) => return Ok(chain::last_hash(&buf[start + 1..=end])),
                None if pos == 0 => return Ok(chain::last_hash(&buf[..=end])),
                None => {}
            }
        }
        if pos == 0 || buf.len() > 256 << 20 {
            return Ok(None);
        }
    }
}

impl FileSink {
    /// Open (append) the log, and find the hash the chain continues from.
    pub fn open(config: FileSinkConfig) -> io::Result<(Self, Option<String>)> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut prev = tail_hash(&config.path)?;
        if prev.is_none() {
            prev = tail_hash(&rotated(&config.path, 1))?;
        }
        let mut file = open_append(&config.path)?;
        let meta = file.metadata()?;
        let id = file_id(&meta);
        let mut size = meta.len();
        // A write cut short by a crash (SIGKILL mid-`write`, a power cut) left part of an event
        // after the last whole one: cut back to it, as a failed write is. That event's
        // decision was never answered under `--audit required` (a check waits for its whole
        // batch to be written), and a part of an event verifies nothing: left in place it
        // would stop `audit verify` at it for good. Said on stderr.
        let whole = whole_lines_end(&mut file, size)?;
        if whole < size {
            let mut cut = vec![0u8; usize::try_from(size - whole).unwrap_or(0).min(4096)];
            file.seek(SeekFrom::Start(whole))?;
            let read = file.read(&mut cut)?;
            cut.truncate(read);
            let decision_id = cut_decision_id(&cut).unwrap_or_default();
            file.set_len(whole)?;
            tracing::warn!(
                event = "decision_log_sink",
                sink = "file",
                path = %config.path.display(),
                bytes = size - whole,
                decision_id = %decision_id,
                "decision log: {} ended in {} bytes of an event cut short (the last run was killed mid-write{}); cut back to the last whole event",
                config.path.display(),
                size - whole,
                if decision_id.is_empty() { String::new() } else { format!("; its decision_id {decision_id}") },
            );
            size = whole;
        }
        Ok((
            Self {
                file,
                config,
                size,
                pending: Vec::with_capacity(256 << 10),
                id,
                unsynced: false,
                last_sync: std::time::Instant::now(),
            },
            prev,
        ))
    }

    /// Add one whole event (a line with its `\n`). It reaches the file at the end of the
    /// batch ([`FileSink::end_batch`]), or at once with [`Fsync::Always`].
    pub fn write(&mut self, line: &[u8]) -> io::Result<()> {
        let len = line.len() as u64;
        let held = self.size + self.pending.len() as u64;
        if held > 0 && held + len > self.config.max_bytes {
            self.flush_pending()?;
            self.rotate()?;
        }
        self.pending.extend_from_slice(line);
        if self.config.fsync == Fsync::Always {
            self.flush_pending()?;
            self.sync()?;
        }
        Ok(())
    }

    /// Bytes of events waiting for the file.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Give up the waiting events (the file refused them too long); returns how many.
    pub fn drop_pending(&mut self) -> usize {
        let n = self.pending.iter().filter(|b| **b == b'\n').count();
        self.pending.clear();
        n
    }

    /// Whether the path still names the open file.
    fn still_ours(&self) -> bool {
        std::fs::metadata(&self.config.path).is_ok_and(|m| file_id(&m) == self.id)
    }

    /// Write the waiting events, all or none: on failure the file is cut back to its last
    /// whole event and the events stay waiting. A file deleted or replaced since it was opened
    /// is left alone and a new one is opened at the path (the error says so; the events then
    /// go to the new file).
    fn flush_pending(&mut self) -> io::Result<()> {
        if !self.still_ours() {
            // A new file at the path takes the events at once (the chain continues in it):
            // said on stderr, not an error — checks waiting for their events under `--audit
            // required` are not denied for a file that was replaced.
            self.file = open_append(&self.config.path)?;
            let meta = self.file.metadata()?;
            self.id = file_id(&meta);
            self.size = meta.len();
            tracing::warn!(
                event = "decision_log_sink",
                sink = "file",
                path = %self.config.path.display(),
                "decision log: {} was deleted or replaced; writing to a new file at that path",
                self.config.path.display()
            );
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        match self.file.write_all(&self.pending) {
            Ok(()) => {
                self.size += self.pending.len() as u64;
                self.pending.clear();
                self.unsynced = true;
                Ok(())
            }
            Err(e) => {
                // No partial line: back to the last whole event.
                let _ = self.file.set_len(self.size);
                Err(e)
            }
        }
    }

    /// The end of a batch of events: write them, and sync when configured and due.
    pub fn end_batch(&mut self) -> io::Result<()> {
        self.flush_pending()?;
        if self.config.fsync == Fsync::Batch
            && self.unsynced
            && self.last_sync.elapsed() >= BATCH_SYNC_INTERVAL
        {
            self.sync()?;
        }
        Ok(())
    }

    /// Write and sync whatever is waiting (at shutdown, and when a sync is due).
    pub fn sync(&mut self) -> io::Result<()> {
        self.flush_pending()?;
        if self.unsynced && self.config.fsync != Fsync::Never {
            self.file.sync_data()?;
        }
        self.unsynced = false;
        self.last_sync = std::time::Instant::now();
        Ok(())
    }

    /// Whether written events wait for a sync that [`FileSink::end_batch`] did not do yet.
    pub fn sync_pending(&self) -> bool {
        self.unsynced && self.config.fsync == Fsync::Batch
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        let p = &self.config.path;
        let keep = self.config.max_files.max(1);
        // The rotated files present, newest first, each moved to the place after its rank —
        // the k-th (from 1) becomes `x.(k+1)` — and those that would pass `x.keep` deleted.
        // Usually that is `x.n` → `x.(n+1)`; after a run killed mid-rotation (`x.1` … `x.8`,
        // `x.10`: `x.9` had moved, `x.8` not yet) it closes the gap. Files moving down (into
        // a gap) go in ascending order, those moving up in descending order: no rename lands
        // on a file not yet moved, and at every step the numbers keep the files' age order, so
        // a kill between two renames leaves a log every reader reads in order.
        let present = arbiter_engine::audit::index::rotated_siblings(p);
        let stays = usize::try_from(keep - 1)
            .unwrap_or(usize::MAX)
            .min(present.len());
        for (_, path) in present[stays..].iter().rev() {
            let _ = std::fs::remove_file(path);
        }
        let moves: Vec<(u32, u32, &PathBuf)> = (2..)
            .zip(&present[..stays])
            .map(|(to, (from, path))| (*from, to, path))
            .collect();
        for (from, to, path) in &moves {
            if from > to {
                std::fs::rename(path, rotated(p, *to))?;
            }
        }
        for (from, to, path) in moves.iter().rev() {
            if from < to {
                std::fs::rename(path, rotated(p, *to))?;
            }
        }
        std::fs::rename(p, rotated(p, 1))?;
        self.file = open_append(p)?;
        self.id = file_id(&self.file.metadata()?);
        self.size = 0;
        self.unsynced = false;
        Ok(())
    }
}

/// The files of a rotated log, oldest first: `x.N`, …, `x.1`, `x`.
pub use arbiter_engine::audit::index::chronological;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use arbiter_engine::audit::chain::{GENESIS, seal};
    use serde_json::json;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("arbiter-file-sink-{}-{}", std::process::id(), name));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn rotates_and_continues_the_chain_across_reopening() {
        let dir = tmp("rotate");
        let path = dir.join("decisions.log");
        let config = FileSinkConfig {
            path: path.clone(),
            max_bytes: 1000,
            max_files: 3,
            fsync: Fsync::Batch,
        };
        let mut prev = GENESIS.to_string();
        for round in 0..2 {
            let (mut sink, tail) = FileSink::open(config.clone()).unwrap();
            if round == 1 {
                assert_eq!(
                    tail.as_deref(),
                    Some(prev.as_str()),
                    "continues after restart"
                );
            }
            for i in 0..20 {
                let serde_json::Value::Object(m) = json!({"decision_id": format!("{round}-{i}")})
                else {
                    unreachable!()
                };
                let (line, h) = seal(m, &prev);
                sink.write(&line).unwrap();
                prev = h;
            }
            sink.end_batch().unwrap();
        }
        // Rotated into at most 3 older files, each under the size limit.
        assert!(rotated(&path, 1).exists() && rotated(&path, 3).exists());
        assert!(!rotated(&path, 4).exists());
        for n in 1..=3 {
            assert!(std::fs::metadata(rotated(&path, n)).unwrap().len() <= 1000);
        }
        let files = chronological(&[
            path.clone(),
            rotated(&path, 1),
            rotated(&path, 3),
            rotated(&path, 2),
        ]);
        assert_eq!(files[0], rotated(&path, 3));
        assert_eq!(files[3], path);
        let readers = files
            .iter()
            .map(|p| {
                (
                    p.display().to_string(),
                    io::BufReader::new(File::open(p).unwrap()),
                )
            })
            .collect();
        let report = chain::verify(readers).unwrap();
        assert_eq!(report.failure, None);
        assert_eq!(report.last_hash.as_deref(), Some(prev.as_str()));
        // The oldest files were deleted, so the chain starts at a hash, not at genesis.
        assert_ne!(report.first_prev_hash.as_deref(), Some(GENESIS));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A run killed between two renames of a rotation leaves a gap in the numbers; the next
    /// rotation closes it, keeping every file and their order, and deletes only past the limit.
    #[test]
    fn a_rotation_closes_a_gap_a_killed_rotation_left() {
        let dir = tmp("gap");
        let path = dir.join("d.log");
        let name = |n: u32| format!("d.log.{n}");
        let contents = |dir: &Path| -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, std::fs::read_to_string(e.path()).unwrap())
                })
                .collect();
            v.sort();
            v
        };
        for (present, keep, want) in [
            // x.9 had moved to x.10, x.8 not yet to x.9.
            (
                vec![1, 2, 3, 4, 5, 6, 7, 8, 10],
                1000,
                vec![
                    (1, 0),
                    (2, 1),
                    (3, 2),
                    (4, 3),
                    (5, 4),
                    (6, 5),
                    (7, 6),
                    (8, 7),
                    (9, 8),
                    (10, 10),
                ],
            ),
            // Gaps at both ends, and a limit: the oldest beyond x.4 go.
            (vec![3, 4, 7, 9], 4, vec![(1, 0), (2, 3), (3, 4), (4, 7)]),
            (vec![2, 5], 1000, vec![(1, 0), (2, 2), (3, 5)]),
            (vec![], 3, vec![(1, 0)]),
        ] {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for n in &present {
                std::fs::write(dir.join(name(*n)), format!("was {n}\n")).unwrap();
            }
            std::fs::write(&path, "was 0\n").unwrap();
            let mut config = FileSinkConfig::new(&path);
            config.max_files = keep;
            let (mut sink, _) = FileSink::open(config).unwrap();
            sink.rotate().unwrap();
            let mut expected: Vec<(String, String)> = want
                .iter()
                .map(|(to, from)| (name(*to), format!("was {from}\n")))
                .collect();
            expected.push(("d.log".into(), String::new()));
            expected.sort();
            assert_eq!(contents(&dir), expected, "from {present:?}, keeping {keep}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_cut_short_event_is_cut_back_and_the_chain_goes_on() {
        let dir = tmp("partial");
        let path = dir.join("d.log");
        let serde_json::Value::Object(m) = json!({"decision_id": "a"}) else {
            unreachable!()
        };
        let (line, h) = seal(m, GENESIS);
        std::fs::write(&path, [line.as_slice(), b"{\"decision_id\":\"cut"].concat()).unwrap();
        let (mut sink, tail) = FileSink::open(FileSinkConfig::new(&path)).unwrap();
        assert_eq!(tail.as_deref(), Some(h.as_str()));
        let serde_json::Value::Object(m) = json!({"decision_id": "b"}) else {
            unreachable!()
        };
        sink.write(&seal(m, &h).0).unwrap();
        sink.end_batch().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains("cut"), "{text}");
        let r = chain::verify(vec![("d.log".into(), io::Cursor::new(text.into_bytes()))]).unwrap();
        assert_eq!(r.failure, None);
        assert_eq!(r.events, 2);
        // Nothing but a cut event: an empty file, the chain from genesis.
        std::fs::write(&path, b"{\"labels\":{},\"decision_id\":\"d-1\",\"inp").unwrap();
        let (_sink, tail) = FileSink::open(FileSinkConfig::new(&path)).unwrap();
        assert_eq!(tail, None);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(
            cut_decision_id(b"{\"labels\":{},\"decision_id\":\"d-1\",\"inp").as_deref(),
            Some("d-1")
        );
        assert_eq!(
            cut_decision_id(b"{\"labels\":{},\"decision_id\":\"d-"),
            None
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
