//! The agent's journal on the node (`--state-dir`, `/var/lib/netscope` by
//! default): reports drained from the kernel but not yet acknowledged, so
//! that they outlive a crash of the agent (issue 15, docs/restarts.md).

use std::io;
use std::path::{Path, PathBuf};

/// File name of the journal inside the state directory.
pub const JOURNAL_FILE: &str = "journal";

/// Removes the journal (and its temporary and quarantined siblings, all
/// named `journal*`) from `dir`, then `dir` itself when that leaves it
/// empty. Files that are not netscope's are left alone. Returns what was
/// removed; nothing there is not an error.
///
/// # Errors
/// The filesystem's error other than "not found".
pub fn remove(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name();
        if name.to_string_lossy().starts_with(JOURNAL_FILE) && e.file_type()?.is_file() {
            std::fs::remove_file(e.path())?;
            removed.push(e.path());
        }
    }
    if std::fs::remove_dir(dir).is_ok() {
        removed.push(dir.to_path_buf());
    }
    Ok(removed)
}

use std::io::Write;
use std::time::{Duration, SystemTime};

use super::{InstanceId, Report, ReportBuffer};
use crate::flow::{
    addr_from_raw, addr_to_raw, family_of, Counters, Direction, FlowKey, FlowSample, L4,
};

/// First bytes of a journal file (format version 1).
const MAGIC: [u8; 8] = *b"NSJRNL\x00\x01";
/// Most kernel states (scopes) whose epochs a journal tracks.
pub const MAX_SCOPES: usize = 4;
/// Bytes of one journaled sample: a 40-byte key and two counters.
const SAMPLE_SIZE: usize = 56;
/// Bytes of everything but the samples, at most (header, two sets, the
/// node name of at most 253 bytes, the checksum).
const FIXED_SIZE: usize = 512;

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// Reading, writing or renaming failed.
    #[error("{op} {path}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file is not a journal this agent can trust; it was renamed aside.
    #[error("{path} is corrupt ({reason}); moved aside to {quarantined}")]
    Corrupt {
        /// The journal.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// Where it went.
        quarantined: PathBuf,
    },
}

/// What a journal holds: the report buffer of the agent that wrote it, and
/// the last kernel stage it journaled.
#[derive(Debug)]
pub struct JournalState {
    /// The buffer: instance id, next sequence number, the frozen report and
    /// the pending set.
    pub buffer: ReportBuffer,
    /// Per kernel state (scope: the pinned meta map's id), the last stage
    /// epoch whose counters are in `buffer` or were acknowledged before. At
    /// most [`MAX_SCOPES`] (an upgrade drains two layouts' maps).
    pub epochs: Vec<(u64, u64)>,
}

/// The journal file in a state directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
    max_flows: usize,
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(format!("truncated at byte {}", self.at));
        };
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn time(&mut self) -> Result<SystemTime, String> {
        let ns = self.u64()?;
        Ok(SystemTime::UNIX_EPOCH + Duration::from_nanos(ns))
    }
    fn counters(&mut self) -> Result<Counters, String> {
        Ok(Counters::new(self.u64()?, self.u64()?))
    }
}

fn put_time(out: &mut Vec<u8>, t: SystemTime) {
    let ns = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    out.extend_from_slice(&ns.to_le_bytes());
}

fn put_counters(out: &mut Vec<u8>, c: Counters) {
    out.extend_from_slice(&c.bytes.to_le_bytes());
    out.extend_from_slice(&c.packets.to_le_bytes());
}

fn put_sample(out: &mut Vec<u8>, key: &FlowKey, c: Counters) {
    let mut raw = [0u8; 40];
    raw[0..16].copy_from_slice(&addr_to_raw(key.src));
    raw[16..32].copy_from_slice(&addr_to_raw(key.dst));
    raw[32] = family_of(key.src);
    raw[33] = key.direction.as_raw();
    if let Some(l4) = key.l4 {
        raw[34] = l4.proto;
        raw[36..38].copy_from_slice(&l4.src_port.to_le_bytes());
        raw[38..40].copy_from_slice(&l4.dst_port.to_le_bytes());
    }
    out.extend_from_slice(&raw);
    put_counters(out, c);
}

fn get_sample(r: &mut Reader<'_>) -> Result<FlowSample, String> {
    let raw = r.take(40)?;
    let family = raw[32];
    let src = addr_from_raw(raw[0..16].try_into().expect("16 bytes"), family);
    let dst = addr_from_raw(raw[16..32].try_into().expect("16 bytes"), family);
    let direction = Direction::from_raw(raw[33]);
    let (Some(src), Some(dst), Some(direction)) = (src, dst, direction) else {
        return Err(format!(
            "a sample with family {family} / direction {}",
            raw[33]
        ));
    };
    let l4 = (raw[34] != 0).then(|| L4 {
        proto: raw[34],
        src_port: u16::from_le_bytes([raw[36], raw[37]]),
        dst_port: u16::from_le_bytes([raw[38], raw[39]]),
    });
    let counters = r.counters()?;
    Ok(FlowSample {
        key: FlowKey {
            src,
            dst,
            direction,
            l4,
        },
        counters,
    })
}

/// FNV-1a, 64 bits: detects a torn or edited file (not an attacker).
fn checksum(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Journal {
    /// The journal in `dir`, for a buffer of at most `max_flows` flows per
    /// set (`--max-buffered-flows`): a file that claims more is corrupt.
    pub fn new(dir: impl Into<PathBuf>, max_flows: usize) -> Journal {
        Journal {
            dir: dir.into(),
            max_flows: max_flows.max(1),
        }
    }

    /// The journal file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE)
    }

    /// Largest file this journal accepts.
    fn max_size(&self) -> u64 {
        (FIXED_SIZE as u64)
            .saturating_add((self.max_flows as u64).saturating_mul(2 * SAMPLE_SIZE as u64))
    }

    /// Serialises `buffer` with the stage it holds.
    pub fn encode(buffer: &ReportBuffer, epochs: &[(u64, u64)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_SIZE + buffer.buffered_flows() * SAMPLE_SIZE);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(buffer.instance.as_bytes());
        out.extend_from_slice(&buffer.next_seq.to_le_bytes());
        let epochs = &epochs[epochs.len().saturating_sub(MAX_SCOPES)..];
        out.push(epochs.len() as u8);
        for (scope, epoch) in epochs {
            out.extend_from_slice(&scope.to_le_bytes());
            out.extend_from_slice(&epoch.to_le_bytes());
        }
        let node = buffer.node.as_bytes();
        let node = &node[..node.len().min(253)];
        out.extend_from_slice(&(node.len() as u16).to_le_bytes());
        out.extend_from_slice(node);
        match &buffer.in_flight {
            Some(r) => {
                out.push(1);
                out.extend_from_slice(&r.seq.to_le_bytes());
                put_time(&mut out, r.window_start);
                put_time(&mut out, r.window_end);
                put_counters(&mut out, r.overflow);
                out.extend_from_slice(&r.folded_flows.to_le_bytes());
                out.extend_from_slice(&(r.samples.len() as u32).to_le_bytes());
                for s in &r.samples {
                    put_sample(&mut out, &s.key, s.counters);
                }
            }
            None => out.push(0),
        }
        match buffer.pending_window {
            Some((s, e)) => {
                out.push(1);
                put_time(&mut out, s);
                put_time(&mut out, e);
            }
            None => out.push(0),
        }
        put_counters(&mut out, buffer.pending_overflow);
        out.extend_from_slice(&buffer.pending_folded.to_le_bytes());
        out.extend_from_slice(&(buffer.pending.len() as u32).to_le_bytes());
        for (k, c) in &buffer.pending {
            put_sample(&mut out, k, *c);
        }
        let sum = checksum(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Parses a journal for `node`; the reason when it cannot be trusted.
    pub fn decode(&self, b: &[u8], node: &str) -> Result<JournalState, String> {
        if b.len() < 16 {
            return Err(format!("{} bytes", b.len()));
        }
        let (body, sum) = b.split_at(b.len() - 8);
        if checksum(body) != u64::from_le_bytes(sum.try_into().expect("8 bytes")) {
            return Err("checksum mismatch".into());
        }
        let mut r = Reader { buf: body, at: 0 };
        if r.take(8)? != MAGIC {
            return Err("not a netscope journal (magic)".into());
        }
        let instance = InstanceId(r.take(16)?.try_into().expect("16 bytes"));
        let next_seq = r.u64()?;
        let n = usize::from(r.u8()?);
        if n > MAX_SCOPES {
            return Err(format!("{n} epoch scopes, more than {MAX_SCOPES}"));
        }
        let mut epochs = Vec::with_capacity(n);
        for _ in 0..n {
            epochs.push((r.u64()?, r.u64()?));
        }
        let n = usize::from(r.u16()?);
        let name = r.take(n)?;
        if name != node.as_bytes() {
            return Err(format!(
                "written for node {:?}, this is {node:?}",
                String::from_utf8_lossy(name)
            ));
        }
        let mut buffer = ReportBuffer::new(node, instance, self.max_flows);
        buffer.next_seq = next_seq;
        let count = |r: &mut Reader<'_>| -> Result<usize, String> {
            let n = r.u32()? as usize;
            if n > self.max_flows {
                return Err(format!(
                    "{n} flows in one set, over the bound of {}",
                    self.max_flows
                ));
            }
            Ok(n)
        };
        if r.u8()? == 1 {
            let seq = r.u64()?;
            if seq >= next_seq || seq == 0 {
                return Err(format!(
                    "in-flight sequence {seq} not below the next {next_seq}"
                ));
            }
            let window_start = r.time()?;
            let window_end = r.time()?;
            let overflow = r.counters()?;
            let folded_flows = r.u64()?;
            let n = count(&mut r)?;
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                samples.push(get_sample(&mut r)?);
            }
            buffer.in_flight = Some(Report {
                node: node.to_string(),
                instance,
                seq,
                window_start,
                window_end,
                samples,
                overflow,
                folded_flows,
            });
        }
        if r.u8()? == 1 {
            buffer.pending_window = Some((r.time()?, r.time()?));
        }
        buffer.pending_overflow = r.counters()?;
        buffer.pending_folded = r.u64()?;
        let n = count(&mut r)?;
        for _ in 0..n {
            let s = get_sample(&mut r)?;
            *buffer.pending.entry(s.key).or_default() += s.counters;
        }
        if r.at != body.len() {
            return Err(format!("{} trailing bytes", body.len() - r.at));
        }
        Ok(JournalState { buffer, epochs })
    }

    /// Loads the journal for `node`. `Ok(None)` when there is none. A file
    /// that is too large, unreadable as a journal, or another node's is
    /// renamed aside (`journal.corrupt-<unix nanoseconds>`) and reported as
    /// [`JournalError::Corrupt`]; it is never half-trusted.
    ///
    /// # Errors
    /// [`JournalError::Io`] when the directory cannot be read;
    /// [`JournalError::Corrupt`] as above.
    pub fn load(&self, node: &str) -> Result<Option<JournalState>, JournalError> {
        let path = self.path();
        let io = |op| {
            let path = path.clone();
            move |source| JournalError::Io { op, path, source }
        };
        // Not followed: a symlink (to /dev/zero, say) is not a journal.
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("reading")(e)),
        };
        let reason = if !meta.file_type().is_file() {
            Some("not a regular file".to_string())
        } else if meta.len() > self.max_size() {
            Some(format!(
                "{} bytes, more than {} flows per set can take ({} bytes)",
                meta.len(),
                self.max_flows,
                self.max_size()
            ))
        } else {
            // Never more than the bound, even if the file grows meanwhile.
            let mut b = Vec::new();
            std::fs::File::open(&path)
                .and_then(|f| {
                    use std::io::Read;
                    f.take(self.max_size()).read_to_end(&mut b)
                })
                .map_err(io("reading"))?;
            match self.decode(&b, node) {
                Ok(state) => return Ok(Some(state)),
                Err(reason) => Some(reason),
            }
        };
        let reason = reason.unwrap_or_default();
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let quarantined = self.dir.join(format!("{JOURNAL_FILE}.corrupt-{nanos}"));
        std::fs::rename(&path, &quarantined).map_err(io("moving aside"))?;
        metrics::counter!(crate::metrics::AGENT_JOURNAL_CORRUPT_TOTAL).increment(1);
        Err(JournalError::Corrupt {
            path,
            reason,
            quarantined,
        })
    }

    /// Writes the journal atomically: a temporary file, fsync, rename,
    /// fsync of the directory.
    ///
    /// # Errors
    /// [`JournalError::Io`].
    pub fn write(
        &self,
        buffer: &ReportBuffer,
        epochs: &[(u64, u64)],
    ) -> Result<usize, JournalError> {
        let bytes = Self::encode(buffer, epochs);
        let path = self.path();
        let tmp = self.dir.join(format!("{JOURNAL_FILE}.tmp"));
        let io = |op, p: &Path| {
            let path = p.to_path_buf();
            move |source| JournalError::Io { op, path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(&bytes).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io("renaming to", &path))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        metrics::gauge!(crate::metrics::AGENT_JOURNAL_BYTES).set(bytes.len() as f64);
        metrics::counter!(crate::metrics::AGENT_JOURNAL_WRITES_TOTAL).increment(1);
        Ok(bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: u8, bytes: u64) -> FlowSample {
        FlowSample {
            key: FlowKey::new(
                format!("10.0.0.{i}").parse().unwrap(),
                "10.9.9.9".parse().unwrap(),
                Direction::FromPod,
            ),
            counters: Counters::new(bytes, 1),
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("netscope-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_keeps_instance_sequence_and_every_byte() {
        let d = dir("rt");
        let j = Journal::new(&d, 100);
        let mut b = ReportBuffer::new("node-1", InstanceId([7; 16]), 100);
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let drain = crate::collect::Drain {
            samples: vec![sample(1, 100), sample(2, 200)],
            overflow: Counters::new(5, 1),
            capacity: 10,
        };
        b.add(drain, t, t + Duration::from_secs(1));
        let sent = b.next_report().unwrap().clone();
        b.add(
            crate::collect::Drain {
                samples: vec![sample(3, 300)],
                ..Default::default()
            },
            t + Duration::from_secs(1),
            t + Duration::from_secs(2),
        );
        j.write(&b, &[(9, 42), (11, 3)]).unwrap();
        let s = j.load("node-1").unwrap().expect("a journal");
        assert_eq!(s.epochs, vec![(9, 42), (11, 3)]);
        assert_eq!(s.buffer.instance(), InstanceId([7; 16]));
        assert_eq!(s.buffer.next_seq, 2);
        let mut got = s.buffer.in_flight().unwrap().clone();
        let mut want = sent;
        got.samples.sort_by_key(|s| s.counters.bytes);
        want.samples.sort_by_key(|s| s.counters.bytes);
        assert_eq!(got, want);
        assert_eq!(s.buffer.buffered_totals(), b.buffered_totals());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn corrupt_absurd_or_foreign_journals_are_quarantined() {
        let d = dir("bad");
        let j = Journal::new(&d, 2);
        let mut b = ReportBuffer::new("node-1", InstanceId([1; 16]), 2);
        b.add(
            crate::collect::Drain {
                samples: vec![sample(1, 1)],
                ..Default::default()
            },
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH,
        );
        j.write(&b, &[]).unwrap();
        // Another node's journal.
        let e = j.load("node-2").unwrap_err();
        assert!(matches!(e, JournalError::Corrupt { .. }), "{e}");
        assert!(!j.path().exists(), "the foreign journal was moved aside");
        // A flipped byte.
        j.write(&b, &[]).unwrap();
        let mut bytes = std::fs::read(j.path()).unwrap();
        bytes[30] ^= 0xff;
        std::fs::write(j.path(), &bytes).unwrap();
        assert!(matches!(
            j.load("node-1"),
            Err(JournalError::Corrupt { .. })
        ));
        // A set larger than the bound, with a valid checksum.
        let big = Journal::new(&d, 10);
        let mut b10 = ReportBuffer::new("node-1", InstanceId([1; 16]), 10);
        b10.add(
            crate::collect::Drain {
                samples: (1..=5).map(|i| sample(i, 1)).collect(),
                ..Default::default()
            },
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH,
        );
        big.write(&b10, &[]).unwrap();
        assert!(matches!(
            j.load("node-1"),
            Err(JournalError::Corrupt { .. })
        ));
        // A symlink (here to /dev/zero) is not followed.
        std::os::unix::fs::symlink("/dev/zero", j.path()).unwrap();
        let e = j.load("node-1").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        // A huge file is refused by its size, never read.
        std::fs::write(j.path(), vec![0u8; 1 << 20]).unwrap();
        let e = j.load("node-1").unwrap_err();
        assert!(e.to_string().contains("bytes, more than"), "{e}");
        let quarantined = std::fs::read_dir(&d).unwrap().count();
        assert!(quarantined >= 1);
        assert!(j.load("node-1").unwrap().is_none());
        let _ = std::fs::remove_dir_all(&d);
    }
}
