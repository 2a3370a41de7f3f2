//! How written bytes become messages: splitting `lines` writes into complete lines, holding
//! the trailing partial line of an open file, and finding a message's key.

use memchr::{memchr, memchr_iter, memrchr};

use crate::store::NewMessage;

/// The complete lines of `data`, each with its `\n`. `data` must end with `\n`.
fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr_iter(b'\n', data).map(move |end| {
        let line = &data[start..=end];
        start = end + 1;
        line
    })
}

/// The most bytes a `raw` message can have, whatever `max_message_bytes` says: 255 pages of
/// 4 KiB. The kernel cuts one `write(2)` into FUSE requests of at most 256 pages of the
/// writer's buffer, so a write that starts inside a page arrives as several requests, which
/// the daemon cannot tell from several writes; 255 pages always come in one request. A
/// kernel that passes fewer pages per request lowers it: see [`raw_write_limit`].
pub const MAX_RAW_WRITE_BYTES: usize = 255 * 4096;

/// What one FUSE WRITE request always carries of a `write(2)`, given the most bytes the
/// kernel puts in one (`max_write`) and the most pages of the writer's buffer one may span
/// (256 with `FUSE_MAX_PAGES`, 32 before Linux 4.20): a buffer that starts inside a page
/// fits one page less.
pub fn raw_write_limit(max_write: usize, max_pages: usize) -> usize {
    max_write
        .min(max_pages.saturating_sub(1) * 4096)
        .min(MAX_RAW_WRITE_BYTES)
}

#[derive(Debug, PartialEq, Eq)]
pub enum LineError<E> {
    /// A line outgrew `max_message_bytes` (counting the `\n` a partial line gets at close):
    /// it is dropped whole, with what was held of it.
    LineTooLong { size: usize, max: usize },
    /// The write carries only more of a line already refused (too long, or begun in a write
    /// that failed): nothing of it is stored.
    DroppedLine,
    /// `commit` failed; nothing was stored, and the held partial line is dropped.
    Commit(E),
}

/// The unfinished last line of one open file (`lines` framing).
#[derive(Debug, Default)]
pub struct PartialLine {
    bytes: Vec<u8>,
    /// Inside a line that is lost — it outgrew `max_message_bytes`, or it began in a write
    /// that failed (the writer was told then): its bytes are refused up to its `\n`, so no
    /// fragment of it is ever stored.
    dropping: bool,
}

impl PartialLine {
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Turns one write into messages: the held partial line completed by the write's first
    /// line, then every further complete line. `commit` gets them all in one call (so one
    /// `cat` write of thousands of lines is one batch); only if it succeeds does the write's
    /// unfinished tail become the new partial line. A write that fails stores nothing of what
    /// it carried and drops the held partial line with it (its rest was in that write), and
    /// a line the failed write began is dropped up to its end: no fragment of a line is ever
    /// stored. A line too long to store is dropped whole the same way. `max_message_bytes`
    /// bounds the partial line, counting the `\n` it gets when committed at close.
    pub fn write<E>(
        &mut self,
        mut data: &[u8],
        max_message_bytes: usize,
        key_separator: Option<&[u8]>,
        commit: impl FnOnce(&[NewMessage<'_>]) -> Result<(), E>,
    ) -> Result<(), LineError<E>> {
        if self.dropping {
            let Some(end) = memchr(b'\n', data) else {
                return Err(LineError::DroppedLine);
            };
            self.dropping = false;
            data = &data[end + 1..];
        }
        // Until the write succeeds, the held line counts as lost with it: a failure or a
        // panic below leaves the file in that state.
        let held = std::mem::take(&mut self.bytes);
        let ends_inside_a_line = data.last().is_some_and(|&b| b != b'\n');
        self.dropping = ends_inside_a_line;
        let tail = self.complete(held, data, max_message_bytes, key_separator, commit)?;
        self.dropping = false;
        self.bytes.extend_from_slice(tail);
        Ok(())
    }

    /// Commits the lines `held` + `data` complete and returns `data`'s unfinished tail.
    fn complete<'d, E>(
        &mut self,
        mut held: Vec<u8>,
        data: &'d [u8],
        max_message_bytes: usize,
        key_separator: Option<&[u8]>,
        commit: impl FnOnce(&[NewMessage<'_>]) -> Result<(), E>,
    ) -> Result<&'d [u8], LineError<E>> {
        let too_long = |size| LineError::LineTooLong {
            size,
            max: max_message_bytes,
        };
        let Some(last_newline) = memrchr(b'\n', data) else {
            let size = held.len() + data.len() + 1;
            if size > max_message_bytes {
                return Err(too_long(size));
            }
            held.extend_from_slice(data);
            self.bytes = held;
            return Ok(&[]);
        };
        let (complete, tail) = data.split_at(last_newline + 1);
        if !tail.is_empty() && tail.len() + 1 > max_message_bytes {
            return Err(too_long(tail.len() + 1));
        }
        let mut messages = Vec::new();
        let rest = if held.is_empty() {
            complete
        } else {
            let first_end = memchr(b'\n', complete).unwrap_or(last_newline) + 1;
            let size = held.len() + first_end;
            if size > max_message_bytes {
                return Err(too_long(size));
            }
            held.extend_from_slice(&complete[..first_end]);
            messages.push(message(&held, key_separator));
            &complete[first_end..]
        };
        messages.extend(lines(rest).map(|line| message(line, key_separator)));
        commit(&messages).map_err(LineError::Commit)?;
        drop(messages);
        // Keep the held line's allocation for the next one.
        held.clear();
        self.bytes = held;
        Ok(tail)
    }

    /// Forgets the held partial line: the write that would have carried it on failed.
    pub fn discard(&mut self) {
        self.bytes.clear();
        self.dropping = false;
    }

    /// The file is closed: commits the partial line with a `\n` added, if there is one (on
    /// error it is kept, so a later close can try again), and ends a dropped line.
    pub fn close<E>(
        &mut self,
        key_separator: Option<&[u8]>,
        commit: impl FnOnce(&[NewMessage<'_>]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.dropping = false;
        if self.bytes.is_empty() {
            return Ok(());
        }
        self.bytes.push(b'\n');
        let committed = commit(&[message(&self.bytes, key_separator)]);
        match committed {
            Ok(()) => self.bytes.clear(),
            Err(_) => {
                self.bytes.pop();
            }
        }
        committed
    }
}

/// `payload` as a message, keyed by the bytes before the first `separator`.
pub fn message<'a>(payload: &'a [u8], separator: Option<&[u8]>) -> NewMessage<'a> {
    NewMessage {
        payload,
        key_len: key_len(payload, separator),
    }
}

/// How many leading bytes of `message` are its key: those before the first `separator`.
fn key_len(message: &[u8], separator: Option<&[u8]>) -> Option<usize> {
    match separator? {
        [] => None,
        [byte] => memchr(*byte, message),
        separator => memchr::memmem::find(message, separator),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(messages: &[NewMessage<'_>]) -> Vec<String> {
        messages
            .iter()
            .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
            .collect()
    }

    /// Writes `data`, returning what was committed as strings.
    fn write(
        partial: &mut PartialLine,
        data: &str,
        max: usize,
    ) -> Result<Vec<String>, LineError<()>> {
        let mut committed = Vec::new();
        partial.write(data.as_bytes(), max, None, |messages| {
            committed = text(messages);
            Ok(())
        })?;
        Ok(committed)
    }

    /// Closes the file, returning what was committed as strings.
    fn close(partial: &mut PartialLine) -> Vec<String> {
        let mut committed = Vec::new();
        partial
            .close(None, |messages| -> Result<(), ()> {
                committed = text(messages);
                Ok(())
            })
            .unwrap();
        committed
    }

    #[test]
    fn complete_lines_are_one_batch() {
        let mut partial = PartialLine::default();
        assert_eq!(
            write(&mut partial, "a\nbb\n\nccc\n", 100).unwrap(),
            ["a\n", "bb\n", "\n", "ccc\n"]
        );
        assert!(partial.is_empty());
    }

    #[test]
    fn a_partial_line_waits_for_its_end() {
        let mut partial = PartialLine::default();
        assert!(write(&mut partial, "hel", 100).unwrap().is_empty());
        assert!(write(&mut partial, "lo", 100).unwrap().is_empty());
        assert_eq!(
            write(&mut partial, " world\nnext\npart", 100).unwrap(),
            ["hello world\n", "next\n"]
        );
        assert!(!partial.is_empty());
        assert_eq!(close(&mut partial), ["part\n"]);
        assert!(partial.is_empty());
    }

    #[test]
    fn closing_without_a_partial_line_commits_nothing() {
        let mut partial = PartialLine::default();
        assert!(close(&mut partial).is_empty());
    }

    #[test]
    fn a_failed_write_drops_the_held_line_and_the_line_it_began() {
        let mut partial = PartialLine::default();
        write(&mut partial, "ab", 100).unwrap();
        let failed = partial.write(b"c\nd", 100, None, |_| Err("disk full"));
        assert_eq!(failed, Err(LineError::Commit("disk full")));
        assert!(
            partial.is_empty(),
            "\"ab\" lost its end in the failed write"
        );
        // More of the line "d…" that the failed write began is refused, up to its end.
        assert_eq!(write(&mut partial, "e", 100), Err(LineError::DroppedLine));
        assert_eq!(write(&mut partial, "e\nf\ng", 100).unwrap(), ["f\n"]);
        assert_eq!(close(&mut partial), ["g\n"]);

        // A failed write that ends at a line's end leaves nothing to drop after it.
        write(&mut partial, "ab", 100).unwrap();
        let failed = partial.write(b"c\n", 100, None, |_| Err("disk full"));
        assert_eq!(failed, Err(LineError::Commit("disk full")));
        assert!(close(&mut partial).is_empty());
        assert_eq!(write(&mut partial, "x\n", 100).unwrap(), ["x\n"]);
    }

    #[test]
    fn a_panic_while_committing_drops_the_held_line() {
        let mut partial = PartialLine::default();
        write(&mut partial, "ab", 100).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = partial.write(b"c\nd", 100, None, |_| -> Result<(), ()> {
                panic!("inside the store")
            });
        }));
        assert!(panicked.is_err());
        assert!(close(&mut partial).is_empty());
    }

    #[test]
    fn a_failed_close_keeps_the_partial_line_for_the_last_close() {
        let mut partial = PartialLine::default();
        write(&mut partial, "xy", 100).unwrap();
        assert_eq!(partial.close(None, |_| Err("disk full")), Err("disk full"));
        assert_eq!(close(&mut partial), ["xy\n"]);
    }

    #[test]
    fn a_line_over_the_limit_is_dropped_whole() {
        let mut partial = PartialLine::default();
        write(&mut partial, "1234", 6).unwrap();
        assert_eq!(
            write(&mut partial, "56", 6),
            Err(LineError::LineTooLong { size: 7, max: 6 })
        );
        // The rest of that line is refused too; what follows its end is kept.
        assert_eq!(write(&mut partial, "789", 6), Err(LineError::DroppedLine));
        assert_eq!(write(&mut partial, "0\nok\nnext", 6).unwrap(), ["ok\n"]);
        assert_eq!(write(&mut partial, "\n", 6).unwrap(), ["next\n"]);
    }

    #[test]
    fn a_line_ending_over_the_limit_drops_its_held_start() {
        let mut partial = PartialLine::default();
        write(&mut partial, "abc", 6).unwrap();
        assert_eq!(
            write(&mut partial, "defg\nok\n", 6),
            Err(LineError::LineTooLong { size: 8, max: 6 })
        );
        assert!(close(&mut partial).is_empty(), "no fragment of it at close");
        assert_eq!(write(&mut partial, "ok\n", 6).unwrap(), ["ok\n"]);
    }

    #[test]
    fn a_write_leaving_too_long_a_tail_is_refused_whole() {
        let mut partial = PartialLine::default();
        write(&mut partial, "ab", 6).unwrap();
        assert_eq!(
            write(&mut partial, "c\n123456", 6),
            Err(LineError::LineTooLong { size: 7, max: 6 })
        );
        // Nothing of it is stored, "ab" is dropped with it, and so is the long line's rest.
        assert_eq!(write(&mut partial, "7\n", 6).unwrap(), Vec::<String>::new());
        assert_eq!(write(&mut partial, "ok\n", 6).unwrap(), ["ok\n"]);
        assert!(close(&mut partial).is_empty());
    }

    #[test]
    fn closing_ends_a_dropped_line() {
        let mut partial = PartialLine::default();
        assert!(write(&mut partial, "1234567", 6).is_err());
        assert!(close(&mut partial).is_empty());
        assert_eq!(write(&mut partial, "new\n", 6).unwrap(), ["new\n"]);
    }

    #[test]
    fn every_line_carries_its_key() {
        let mut partial = PartialLine::default();
        let mut keys = Vec::new();
        partial
            .write(b"a:1\nno key\nbb:2\nc", 100, Some(b":"), |messages| {
                keys = messages.iter().map(|m| m.key_len).collect();
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(keys, [Some(1), None, Some(2)]);
    }

    #[test]
    fn keys_end_at_the_first_separator() {
        assert_eq!(key_len(b"user:42:x\n", Some(b":")), Some(4));
        assert_eq!(key_len(b"k\tv\n", Some(b"\t")), Some(1));
        assert_eq!(key_len(b"a::b::c", Some(b"::")), Some(1));
        assert_eq!(key_len(b":empty key", Some(b":")), Some(0));
        assert_eq!(key_len(b"no separator\n", Some(b":")), None);
        assert_eq!(key_len(b"a:b", None), None);
    }

    #[test]
    fn a_raw_write_is_limited_to_what_one_request_always_carries() {
        // Linux 4.20 on: 256 pages, 1 MiB asked for.
        assert_eq!(raw_write_limit(1 << 20, 256), 255 * 4096);
        // Before FUSE_MAX_PAGES: 32 pages, so 31 from a buffer that starts inside a page.
        assert_eq!(raw_write_limit(1 << 20, 32), 31 * 4096);
        // A smaller max_write bounds it, whatever the pages.
        assert_eq!(raw_write_limit(100_000, 256), 100_000);
        assert_eq!(raw_write_limit(16 << 20, 1024), MAX_RAW_WRITE_BYTES);
    }
}
