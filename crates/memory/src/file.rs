//! A small kernel file kept open and re-read from offset 0 on every sample.
//!
//! `/proc` and cgroup files are generated on each read, so re-reading an open file
//! from the start gives fresh figures. One `pread` costs a fraction of an
//! open + read + close (on the development VM: 0.3 µs against 2.4 µs for
//! `/proc/self/statm`), which is most of what a sample costs.

use std::fs::File;
use std::io;
use std::path::PathBuf;

/// A missing file is looked for again only every this many reads: a cgroup file
/// that does not exist (the root's `memory.max`) rarely appears later.
const RETRY_MISSING_EVERY: u32 = 64;

/// The most a kept file may hold; larger content is treated as unreadable.
const MAX_LEN: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct KeptFile {
    path: PathBuf,
    file: Option<File>,
    /// Reads left to skip before trying to open a missing file again.
    skip: u32,
    buf: Vec<u8>,
}

impl KeptFile {
    pub(crate) fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            file: None,
            skip: 0,
            buf: Vec::new(),
        }
    }

    /// The file's current content, or `None` when it is missing, unreadable, too
    /// large or not UTF-8.
    pub(crate) fn read(&mut self) -> Option<&str> {
        if self.file.is_none() {
            if self.skip > 0 {
                self.skip -= 1;
                return None;
            }
            match File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(_) => {
                    self.skip = RETRY_MISSING_EVERY - 1;
                    return None;
                }
            }
        }
        let file = self.file.as_ref()?;
        match read_all_at(file, &mut self.buf) {
            Ok(n) => std::str::from_utf8(&self.buf[..n]).ok(),
            Err(_) => {
                // A removed cgroup, a revoked file: open it afresh next time.
                self.file = None;
                None
            }
        }
    }
}

/// Reads the whole file from offset 0 into `buf`, growing it as needed.
fn read_all_at(file: &File, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.is_empty() {
        buf.resize(4096, 0);
    }
    let mut n = 0;
    loop {
        if n == buf.len() {
            if buf.len() >= MAX_LEN {
                return Err(io::Error::other("file larger than 1 MiB"));
            }
            buf.resize(buf.len() * 2, 0);
        }
        let read = read_at(file, &mut buf[n..], n as u64)?;
        if read == 0 {
            return Ok(n);
        }
        n += read;
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_at(mut file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.read(buf)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("heijunka-memory-{}-{name}", std::process::id()))
    }

    #[test]
    fn rereads_fresh_content_and_survives_removal() {
        let path = temp_path("kept");
        std::fs::write(&path, "first").unwrap();
        let mut kept = KeptFile::new(&path);
        assert_eq!(kept.read(), Some("first"));
        // Rewritten in place (same inode): the kept handle sees the new content.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(b"second, longer").unwrap();
        drop(f);
        assert_eq!(kept.read(), Some("second, longer"));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn large_content_grows_the_buffer() {
        let path = temp_path("large");
        let text = "x".repeat(10_000);
        std::fs::write(&path, &text).unwrap();
        let mut kept = KeptFile::new(&path);
        assert_eq!(kept.read().map(str::len), Some(10_000));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_missing_file_is_retried_only_now_and_then() {
        let path = temp_path("missing");
        let _ = std::fs::remove_file(&path);
        let mut kept = KeptFile::new(&path);
        assert_eq!(kept.read(), None);
        std::fs::write(&path, "now here").unwrap();
        for _ in 1..RETRY_MISSING_EVERY {
            assert_eq!(kept.read(), None, "backing off");
        }
        assert_eq!(kept.read(), Some("now here"));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn binary_garbage_is_none() {
        let path = temp_path("binary");
        std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        assert_eq!(KeptFile::new(&path).read(), None);
        std::fs::remove_file(&path).unwrap();
    }
}
