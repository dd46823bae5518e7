//! The cheap Linux path for the process's resident memory: `/proc/self/statm`, scaled
//! by the page size read once from `/proc/self/auxv`.

use std::fs;
use std::path::Path;

use crate::file::KeptFile;

/// The page size assumed when `/proc/self/auxv` cannot be read (x86-64's, and the
/// usual one on aarch64).
pub(crate) const FALLBACK_PAGE_SIZE: u64 = 4096;

/// `AT_PAGESZ` in the ELF auxiliary vector.
const AT_PAGESZ: usize = 6;
/// `AT_NULL`, which ends the vector.
const AT_NULL: usize = 0;

/// The resident set in pages: the second field of `/proc/self/statm`
/// (`size resident shared text lib data dt`).
pub(crate) fn parse_statm_resident(text: &str) -> Option<u64> {
    let mut fields = text.split_ascii_whitespace();
    let _size: u64 = fields.next()?.parse().ok()?;
    fields.next()?.parse().ok()
}

/// The page size from the bytes of `/proc/self/auxv`: native-endian `(key, value)`
/// word pairs, ending with `AT_NULL`. `None` when absent, zero or not a power of two.
pub(crate) fn parse_auxv_page_size(bytes: &[u8]) -> Option<u64> {
    const WORD: usize = size_of::<usize>();
    for pair in bytes.chunks_exact(2 * WORD) {
        let (key, value) = pair.split_at(WORD);
        let key = usize::from_ne_bytes(key.try_into().ok()?);
        let value = usize::from_ne_bytes(value.try_into().ok()?);
        match key {
            AT_NULL => return None,
            AT_PAGESZ => {
                let size = u64::try_from(value).ok()?;
                return size.is_power_of_two().then_some(size);
            }
            _ => {}
        }
    }
    None
}

/// Reads the page size under `root`, or [`FALLBACK_PAGE_SIZE`].
pub(crate) fn page_size(root: &Path) -> u64 {
    fs::read(root.join("proc/self/auxv"))
        .ok()
        .and_then(|b| parse_auxv_page_size(&b))
        .unwrap_or(FALLBACK_PAGE_SIZE)
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, in bytes (the file reports
/// KiB as "kB"). `None` unless both are present.
pub(crate) fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let mut total = None;
    let mut available = None;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            _ => continue,
        };
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        *slot = Some(kib.saturating_mul(1024));
        if total.is_some() && available.is_some() {
            break;
        }
    }
    Some((total?, available?))
}

/// `/proc/self/statm` and `/proc/meminfo`, kept open.
#[derive(Debug)]
pub(crate) struct ProcFiles {
    page_size: u64,
    statm: KeptFile,
    meminfo: KeptFile,
}

impl ProcFiles {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            page_size: page_size(root),
            statm: KeptFile::new(root.join("proc/self/statm")),
            meminfo: KeptFile::new(root.join("proc/meminfo")),
        }
    }

    pub(crate) fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The resident set, in bytes.
    pub(crate) fn rss(&mut self) -> Option<u64> {
        let pages = self.statm.read().and_then(parse_statm_resident)?;
        Some(pages.saturating_mul(self.page_size))
    }

    /// System total and available memory, in bytes.
    pub(crate) fn system(&mut self) -> Option<(u64, u64)> {
        self.meminfo.read().and_then(parse_meminfo)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn statm_resident_field() {
        assert_eq!(parse_statm_resident("765 443 415 5 0 123 0\n"), Some(443));
        assert_eq!(parse_statm_resident("765"), None);
        assert_eq!(parse_statm_resident(""), None);
        assert_eq!(parse_statm_resident("a 1"), None);
        assert_eq!(parse_statm_resident("1 -4"), None);
    }

    #[test]
    fn meminfo_total_and_available() {
        let text = "MemTotal:       24683520 kB\nMemFree:        22482944 kB\nMemAvailable:   24164352 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some((24_683_520 * 1024, 24_164_352 * 1024))
        );
        assert_eq!(parse_meminfo("MemTotal: 10 kB\n"), None, "no MemAvailable");
        assert_eq!(parse_meminfo("MemTotal: x kB\nMemAvailable: 1 kB\n"), None);
        assert_eq!(parse_meminfo(""), None);
    }

    fn auxv(pairs: &[(usize, usize)]) -> Vec<u8> {
        pairs
            .iter()
            .flat_map(|&(k, v)| k.to_ne_bytes().into_iter().chain(v.to_ne_bytes()))
            .collect()
    }

    #[test]
    fn auxv_page_size() {
        assert_eq!(
            parse_auxv_page_size(&auxv(&[(33, 7), (6, 65536), (0, 0)])),
            Some(65536)
        );
        assert_eq!(
            parse_auxv_page_size(&auxv(&[(33, 7), (0, 0), (6, 4096)])),
            None
        );
        assert_eq!(parse_auxv_page_size(&auxv(&[(6, 0)])), None);
        assert_eq!(parse_auxv_page_size(&auxv(&[(6, 3000)])), None);
        assert_eq!(parse_auxv_page_size(&[1, 2, 3]), None);
        assert_eq!(parse_auxv_page_size(&[]), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    #[cfg_attr(miri, ignore)] // miri does not provide /proc/self/auxv
    fn this_process_has_a_page_size_and_resident_memory() {
        let mut files = ProcFiles::new(Path::new("/"));
        let page = files.page_size();
        assert!(page.is_power_of_two() && page >= 4096, "page size {page}");
        assert!(files.rss().expect("statm readable on linux") > 0);
        let (total, available) = files.system().expect("meminfo readable on linux");
        assert!(total > 0 && available <= total);
    }
}
