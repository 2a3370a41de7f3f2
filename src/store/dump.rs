//! `commitfs dump [--topic T] [--partition P] [--from OFFSET] DATA_DIR`: every message of
//! the commit log as one line of text, in the order the log holds them. Offline: it holds
//! the store's lock (so it refuses a mounted store) and writes nothing. It walks the log
//! files once, front to back, with the same decoders recovery uses, so it runs at the speed
//! of reading the files; topic names come from `store.toml`.
//!
//! One line per message (README "commitfs dump" says how bytes are escaped):
//!
//! ```text
//! topic=orders partition=0 offset=42 timestamp=1764000000000 key=user1 size=12 crc=ok batch=4096 payload=user1:hello\n
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use super::checkpoint::Checkpoint;
use super::commitlog;
use super::error::{Result, StoreError};
use super::format::{self, Batch, Scanned};
use super::mapped::MappedFile;
use super::meta::{self, Meta};
use super::recovery::{self, LOG_DIR};
use super::released::ReleasedFiles;

/// Which messages to print.
#[derive(Clone, Debug, Default)]
pub struct DumpOptions {
    /// A topic's name; every topic without one.
    pub topic: Option<String>,
    pub partition: Option<u32>,
    /// Messages at this offset and later (in each partition).
    pub from: u64,
}

/// What a dump found besides the messages.
#[derive(Debug, Default)]
pub struct DumpReport {
    /// Messages printed.
    pub messages: u64,
    /// Lines for the user (stderr): damage, a torn tail, spans an earlier repair skipped.
    pub notes: Vec<String>,
    /// Invalid bytes with valid batches after them, or a batch whose CRC does not match
    /// before the log's end: the mount would refuse this store.
    pub damaged: bool,
    /// Batches not shown: retention removed them (below their partition's start in the
    /// checkpoint), though the log still holds their headers.
    pub removed_batches: u64,
}

/// Prints the messages of the store in `dir` that `options` select to `out`.
pub fn dump(dir: &Path, options: &DumpOptions, out: &mut impl Write) -> Result<DumpReport> {
    if !dir.is_dir() {
        return Err(StoreError::io(
            format!("opening {}", dir.display()),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let _lock = recovery::lock_store(dir)?;
    let meta = Meta::load(dir)?;
    let mut report = DumpReport::default();
    if meta.is_none() {
        if recovery::data_without_meta(dir).is_none() {
            return Err(StoreError::InvalidSetting(format!(
                "{} holds no commitfs store",
                dir.display()
            )));
        }
        report.notes.push(format!(
            "note: {} is missing: topics are shown by id (topic=#ID)",
            dir.join(meta::META_FILE).display()
        ));
    }
    if meta::abort_marker_exists(dir) {
        report.notes.push(
            "note: the last stop was unclean: the log is shown as it is on disk; the next mount recovers it".into(),
        );
    }
    let filter = Filter::new(meta.as_ref(), options)?;
    let log_dir = dir.join(LOG_DIR);
    let bases = match log_dir.is_dir() {
        true => commitlog::list_files(&log_dir)?,
        false => Vec::new(),
    };
    let file_bytes = match &meta {
        Some(meta) => meta.layout.commit_log_file_bytes,
        None => file_length(&log_dir, bases.first())?,
    };
    let segment_messages = meta
        .as_ref()
        .map_or(super::StoreConfig::default().segment_messages, |meta| {
            meta.layout.segment_messages
        });
    // Its partition starts tell which batches retention removed; without one, all are shown.
    let checkpoint = Checkpoint::load(dir).ok().flatten();
    let mut walk = Walk {
        log_dir: &log_dir,
        file_bytes,
        released: ReleasedFiles::new(dir, u64::from(segment_messages), false)
            .with_starts(checkpoint.iter().flat_map(Checkpoint::starts)),
        filter,
        line: Vec::with_capacity(4096),
        report,
    };
    walk.run(&bases, out)?;
    if walk.report.removed_batches > 0 {
        walk.report.notes.push(format!(
            "note: {} batches below their partitions' starts are not shown: retention removed them",
            walk.report.removed_batches
        ));
    }
    out.flush().map_err(output_error)?;
    Ok(walk.report)
}

/// A store without `store.toml`: its commit-log files' own length.
fn file_length(log_dir: &Path, first: Option<&u64>) -> Result<u64> {
    let Some(&base) = first else {
        return Ok(0);
    };
    let path = log_dir.join(format::file_name(base));
    std::fs::metadata(&path)
        .map(|m| m.len())
        .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))
}

fn output_error(error: std::io::Error) -> StoreError {
    StoreError::io("writing the dump", error)
}

/// The selection, with the topic resolved to its id, and every topic's name by id.
struct Filter {
    names: HashMap<u32, String>,
    topic_id: Option<u32>,
    partition: Option<u32>,
    from: u64,
}

impl Filter {
    fn new(meta: Option<&Meta>, options: &DumpOptions) -> Result<Filter> {
        let names: HashMap<u32, String> = meta
            .iter()
            .flat_map(|m| &m.topics)
            .map(|t| (t.id, t.name.clone()))
            .collect();
        let topic_id = match &options.topic {
            None => None,
            Some(name) => Some(
                names
                    .iter()
                    .find(|(_, n)| *n == name)
                    .map(|(&id, _)| id)
                    .ok_or_else(|| StoreError::NoSuchTopic(name.clone()))?,
            ),
        };
        Ok(Filter {
            names,
            topic_id,
            partition: options.partition,
            from: options.from,
        })
    }

    /// Whether any message of the batch is selected.
    fn wants(&self, header: &format::BatchHeader) -> bool {
        self.topic_id.is_none_or(|id| id == header.topic_id)
            && self.partition.is_none_or(|p| p == header.partition)
            && header.end_offset() > self.from
    }
}

/// One pass over the log files.
struct Walk<'a> {
    log_dir: &'a Path,
    file_bytes: u64,
    /// Where batches whose messages' bytes the log gave back are read from.
    released: ReleasedFiles,
    filter: Filter,
    /// One message's line, reused.
    line: Vec<u8>,
    report: DumpReport,
}

impl Walk<'_> {
    fn run(&mut self, bases: &[u64], out: &mut impl Write) -> Result<()> {
        let mut next = bases.first().map(|_| (0usize, 0usize));
        while let Some((i, position)) = next.take() {
            let path = self.log_dir.join(format::file_name(bases[i]));
            // Read only: nothing allocated, so released (punched) ranges stay holes.
            let file = MappedFile::open_allocating_from(&path, self.file_bytes, self.file_bytes)?;
            let len = file.allocated().min(file.capacity()) as usize;
            // SAFETY: `dump` holds the store's lock and writes nothing: no one writes the file.
            let bytes = unsafe { file.bytes(0, len) };
            next = match self.file(bases[i], bytes, position, out)? {
                Some(stop) => self.resume_after(bases, i, bytes, stop)?,
                None => (i + 1 < bases.len()).then_some((i + 1, 0)),
            };
        }
        Ok(())
    }

    /// Prints the selected messages of one file from `position`; returns where it met
    /// invalid bytes (and why), if it did.
    fn file(
        &mut self,
        base: u64,
        bytes: &[u8],
        mut position: usize,
        out: &mut impl Write,
    ) -> Result<Option<(usize, &'static str)>> {
        let mut restored = Vec::new();
        while position < bytes.len() {
            let scanned = match self.released.scan(&bytes[position..], &mut restored) {
                Ok(scanned) => scanned,
                // The only copy of its messages is damaged: nothing of them is shown (the
                // log holds holes there), and the walk goes on past the batch.
                Err(why) => {
                    self.report.damaged = true;
                    self.report.notes.push(format!("damage: {why}"));
                    let size = format::decode_header(&bytes[position..])
                        .map_or(bytes.len() - position, |b| b.header.size as usize);
                    position += size;
                    continue;
                }
            };
            match scanned {
                Scanned::Record(batch) => {
                    if self.released.removed_by_retention(&batch.header) {
                        self.report.removed_batches += 1;
                    } else {
                        self.batch(&batch, base + position as u64, true, out)?;
                    }
                    position += batch.header.size as usize;
                }
                Scanned::Skip(len) => {
                    self.report.notes.push(format!(
                        "note: {} bytes {position}..{}: a damaged span an earlier `commitfs check --repair` skipped",
                        self.log_dir.join(format::file_name(base)).display(),
                        position + len
                    ));
                    position += len;
                }
                Scanned::EndOfFile => return Ok(None),
                Scanned::Invalid(reason) => {
                    // A batch whose CRC does not match is still shown, marked: its header
                    // and table are in bounds (decode_header checked them).
                    if let Ok(batch) = format::decode_header(&bytes[position..]) {
                        self.batch(&batch, base + position as u64, false, out)?;
                    }
                    return Ok(Some((position, reason)));
                }
            }
        }
        Ok(None)
    }

    /// After invalid bytes at `stop` in file `i`: where the next valid batch is, in this
    /// file or a later one. None: the log ends there.
    fn resume_after(
        &mut self,
        bases: &[u64],
        i: usize,
        bytes: &[u8],
        (position, reason): (usize, &'static str),
    ) -> Result<Option<(usize, usize)>> {
        let path = self.log_dir.join(format::file_name(bases[i]));
        let mut found = format::next_valid_record(bytes, position + 1).map(|at| (i, at));
        for (j, &base) in bases.iter().enumerate().skip(i + 1) {
            if found.is_some() {
                break;
            }
            let later = self.log_dir.join(format::file_name(base));
            // SAFETY: `dump` holds the store's lock and writes nothing: no one writes the file.
            let first = unsafe { commitlog::first_valid_record(&later, self.file_bytes)? };
            found = first.map(|at| (j, at));
        }
        match found {
            Some((j, at)) => {
                self.report.damaged = true;
                self.report.notes.push(format!(
                    "damage: {} byte {position}: {reason}; valid batches resume at {} byte {at}",
                    path.display(),
                    self.log_dir.join(format::file_name(bases[j])).display()
                ));
            }
            // The unused rest of the last file: the log's normal end.
            None if reason == "zeroes (never written)" => {}
            None => self.report.notes.push(format!(
                "note: the log ends at {} byte {position}: {reason} (a write torn by a crash: the next mount cuts it there)",
                path.display()
            )),
        }
        Ok(found)
    }

    fn batch(
        &mut self,
        batch: &Batch<'_>,
        at: u64,
        crc_ok: bool,
        out: &mut impl Write,
    ) -> Result<()> {
        if !self.filter.wants(&batch.header) {
            return Ok(());
        }
        for message in batch.messages() {
            if message.offset < self.filter.from {
                continue;
            }
            self.line.clear();
            let topic = match self.filter.names.get(&message.topic_id) {
                Some(name) => std::borrow::Cow::Borrowed(name.as_str()),
                // A deleted topic's batch, until retention removes its file.
                None => std::borrow::Cow::Owned(format!("#{}", message.topic_id)),
            };
            // Writing to a Vec cannot fail.
            let _ = write!(
                self.line,
                "topic={topic} partition={} offset={} timestamp={} key=",
                message.partition, message.offset, message.timestamp
            );
            let payload = batch.payload(&message);
            match message.key_len {
                Some(k) => escape_key(&mut self.line, &payload[..k as usize]),
                None => self.line.push(b'-'),
            }
            let crc = if crc_ok { "ok" } else { "bad" };
            let _ = write!(
                self.line,
                " size={} crc={crc} batch={at} payload=",
                message.len
            );
            escape(&mut self.line, payload, false);
            self.line.push(b'\n');
            out.write_all(&self.line).map_err(output_error)?;
            self.report.messages += 1;
        }
        Ok(())
    }
}

/// A key: escaped like a payload, and a space too (fields are separated by spaces); a key
/// that is exactly `-` is written `\x2d`, since `key=-` means "no key".
fn escape_key(out: &mut Vec<u8>, key: &[u8]) {
    if key == b"-" {
        out.extend_from_slice(b"\\x2d");
    } else {
        escape(out, key, true);
    }
}

/// Appends `bytes` so that they take one line and can be told back exactly: valid UTF-8
/// stays as it is except `\` (as `\\`), newline, tab and carriage return (`\n`, `\t`, `\r`)
/// and other control bytes (`\xHH`); bytes that are not UTF-8 are written `\xHH`.
fn escape(out: &mut Vec<u8>, bytes: &[u8], space: bool) {
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid().as_bytes();
        let mut run = 0;
        for (i, &byte) in valid.iter().enumerate() {
            let plain = byte >= 0x20 && byte != 0x7f && byte != b'\\' && !(space && byte == b' ');
            if plain {
                continue;
            }
            out.extend_from_slice(&valid[run..i]);
            run = i + 1;
            match byte {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\r' => out.extend_from_slice(b"\\r"),
                _ => hex(out, byte),
            }
        }
        out.extend_from_slice(&valid[run..]);
        chunk.invalid().iter().for_each(|&byte| hex(out, byte));
    }
}

fn hex(out: &mut Vec<u8>, byte: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&[
        b'\\',
        b'x',
        DIGITS[usize::from(byte >> 4)],
        DIGITS[usize::from(byte & 15)],
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(bytes: &[u8], space: bool) -> String {
        let mut out = Vec::new();
        escape(&mut out, bytes, space);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escaping_keeps_one_message_on_one_line_and_text_readable() {
        assert_eq!(
            escaped(b"plain text: \xc3\xa9t\xc3\xa9", false),
            "plain text: été"
        );
        assert_eq!(
            escaped(b"a\\b\nc\td\re\x00\x7f", false),
            "a\\\\b\\nc\\td\\re\\x00\\x7f"
        );
        assert_eq!(
            escaped(b"not utf-8: \xff\xc3", false),
            "not utf-8: \\xff\\xc3"
        );
        assert_eq!(escaped(b"a key", true), "a\\x20key");
        assert_eq!(escaped(b"a payload", false), "a payload");
        let mut key = Vec::new();
        escape_key(&mut key, b"-");
        assert_eq!(key, b"\\x2d");
    }
}
