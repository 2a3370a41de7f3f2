//! Fault injection for tests, compiled only with the `failpoints` feature.
//!
//! - The file-layer failpoints (`mapped::create`, `mapped::allocate`, …; README "Testing")
//!   return the io error their argument names: `return(enospc)`, `return(eio)`, or
//!   `return(short)` for an operation that did part of its work and then ran out of space.
//! - A power-loss record: once [`record_durability`] is called, every file created through
//!   `MappedFile::create` is followed — which of its bytes were made durable, and with what
//!   content (`msync` through `MappedFile::flush`), and whether its directory entry was synced —
//!   as is every file replaced with `write_atomically`. [`durable_image`] tells a test what a
//!   machine crash would leave of a file.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// The io error a failpoint's argument asks for (`eio` when it names none).
pub(crate) fn injected_error(arg: Option<&str>) -> std::io::Error {
    let errno = match arg {
        Some("enospc") | Some("short") => libc::ENOSPC,
        _ => libc::EIO,
    };
    std::io::Error::from_raw_os_error(errno)
}

/// Whether the failpoint's argument asks for a partial operation before the error.
pub(crate) fn is_short(arg: Option<&str>) -> bool {
    arg == Some("short")
}

/// What a machine crash leaves of one file.
#[derive(Clone, Debug, Default)]
pub struct DurableImage {
    /// Whether the file's directory entry is durable: a file created and never covered by a
    /// sync of its directory may be missing after the crash.
    pub linked: bool,
    /// The content each durable byte had when it was made durable (bytes past the last
    /// durable range are not held).
    pub bytes: Vec<u8>,
    /// Durable byte ranges, sorted and disjoint.
    pub durable: Vec<Range<u64>>,
}

impl DurableImage {
    fn store(&mut self, at: u64, data: &[u8]) {
        let end = at + data.len() as u64;
        if at == end {
            return;
        }
        if self.bytes.len() < end as usize {
            self.bytes.resize(end as usize, 0);
        }
        self.bytes[at as usize..end as usize].copy_from_slice(data);
        let mut merged = at..end;
        self.durable.retain(|r| {
            let touches = r.start <= merged.end && merged.start <= r.end;
            if touches {
                merged = merged.start.min(r.start)..merged.end.max(r.end);
            }
            !touches
        });
        let position = self.durable.partition_point(|r| r.start < merged.start);
        self.durable.insert(position, merged);
    }
}

static RECORDING: AtomicBool = AtomicBool::new(false);
static FILES: Mutex<BTreeMap<PathBuf, DurableImage>> = Mutex::new(BTreeMap::new());

/// Starts recording what is made durable (for the rest of the process).
pub fn record_durability() {
    RECORDING.store(true, Ordering::Release);
}

/// What a crash now would leave of `path`; `None` for a file that is not followed (it was
/// not created while recording, or not by the store's file layer): its bytes are taken as
/// they are.
pub fn durable_image(path: &Path) -> Option<DurableImage> {
    FILES.lock().get(path).cloned()
}

pub(crate) fn recording() -> bool {
    RECORDING.load(Ordering::Acquire)
}

/// A file was created: nothing of it is durable yet, not even its name.
pub(crate) fn created(path: &Path) {
    if recording() {
        FILES
            .lock()
            .insert(path.to_owned(), DurableImage::default());
    }
}

/// `data`, at byte `at` of `path`, was written back and waited for.
pub(crate) fn made_durable(path: &Path, at: u64, data: &[u8]) {
    if recording() {
        if let Some(image) = FILES.lock().get_mut(path) {
            image.store(at, data);
        }
    }
}

/// `path` was replaced as a whole, durably, by `bytes` (after the directory sync).
pub(crate) fn replaced(path: &Path, bytes: &[u8]) {
    if recording() {
        let mut image = DurableImage {
            linked: true,
            ..DurableImage::default()
        };
        image.store(0, bytes);
        FILES.lock().insert(path.to_owned(), image);
    }
}

/// `from` was renamed to `to`: its durable bytes go with it, and the new name is not
/// durable until its directory is synced.
pub(crate) fn renamed(from: &Path, to: &Path) {
    if recording() {
        let mut files = FILES.lock();
        if let Some(mut image) = files.remove(from) {
            image.linked = false;
            files.insert(to.to_owned(), image);
        }
    }
}

/// `dir` was synced: the names of the files in it are durable.
pub(crate) fn dir_synced(dir: &Path) {
    if recording() {
        for (path, image) in FILES.lock().iter_mut() {
            if path.parent() == Some(dir) {
                image.linked = true;
            }
        }
    }
}

/// The file system holding `dir` was synced: the names of the files under it are durable.
pub(crate) fn file_system_synced(dir: &Path) {
    if recording() {
        for (path, image) in FILES.lock().iter_mut() {
            if path.starts_with(dir) {
                image.linked = true;
            }
        }
    }
}

/// Takes `path` as durable as it is now (a file a test placed, such as a crash copy), so
/// that what the store later changes in it without making it durable is followed.
pub fn assume_durable(path: &Path) {
    if recording() {
        replaced(path, &std::fs::read(path).unwrap_or_default());
    }
}

/// Whether failpoint `name` fires for an operation on `path`, and with what argument. An
/// argument `ERROR@TEXT` fires only for paths that contain TEXT, so a test can fail one kind
/// of file: `return(enospc@/commitlog/)` fails commit-log files and lets queue files be.
pub(crate) fn fires(name: &str, path: &Path) -> Option<Option<String>> {
    let arg = fail::eval(name, |arg| arg)?;
    match arg.as_deref().and_then(|arg| arg.split_once('@')) {
        Some((error, only)) => path
            .to_string_lossy()
            .contains(only)
            .then(|| Some(error.to_owned())),
        None => Some(arg),
    }
}
