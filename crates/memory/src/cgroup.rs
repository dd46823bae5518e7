//! cgroup v1 / v2 discovery and parsing: which directories hold the process's memory
//! limits, and what those limits and usages are.
//!
//! Discovery reads `/proc/self/cgroup` (which cgroup the process is in, per
//! hierarchy) and `/proc/self/mountinfo` (where each hierarchy is mounted, and which
//! part of it the mount shows). The chain of directories runs from the process's own
//! cgroup up to the mount point; a limit set on any of them applies to the process,
//! so every sample reads each one and keeps the one with the least headroom.
//!
//! Every parser here takes untrusted text and returns `None` (or skips the line)
//! instead of panicking.

use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::file::KeptFile;

/// Which cgroup interface a limit came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupVersion {
    /// cgroup v1: `memory.limit_in_bytes` / `memory.usage_in_bytes`.
    V1,
    /// cgroup v2 (the unified hierarchy): `memory.max` / `memory.current`.
    V2,
}

impl CgroupVersion {
    fn limit_file(self) -> &'static str {
        match self {
            Self::V1 => "memory.limit_in_bytes",
            Self::V2 => "memory.max",
        }
    }

    fn usage_file(self) -> &'static str {
        match self {
            Self::V1 => "memory.usage_in_bytes",
            Self::V2 => "memory.current",
        }
    }

    /// The `memory.stat` key of reclaimable file pages (hierarchical in v1).
    fn inactive_file_key(self) -> &'static str {
        match self {
            Self::V1 => "total_inactive_file",
            Self::V2 => "inactive_file",
        }
    }
}

/// The cgroup whose memory limit binds the process: of the limits along the path
/// from the process's own cgroup up to the root of the hierarchy, the one whose
/// working set is the largest share of it (the least headroom), which need not be
/// the smallest limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CgroupMemory {
    /// The interface the limit was read from.
    pub version: CgroupVersion,
    /// The directory whose limit file set the limit (a parent of the process's own
    /// cgroup when only the parent sets one).
    pub path: String,
    /// The limit, in bytes.
    pub limit: u64,
    /// That cgroup's working set, in bytes: its usage (`memory.current` or
    /// `memory.usage_in_bytes`, which counts every process below it) less its
    /// inactive file pages, which the kernel reclaims before it kills anything (the
    /// figure the kubelet evicts on). `None` when the usage file is unreadable.
    pub usage: Option<u64>,
}

impl CgroupMemory {
    /// A reading, for custom probes and tests.
    pub fn new(version: CgroupVersion, path: impl Into<String>, limit: u64) -> Self {
        Self {
            version,
            path: path.into(),
            limit,
            usage: None,
        }
    }

    /// The same reading with a usage figure.
    #[must_use]
    pub fn with_usage(mut self, usage: u64) -> Self {
        self.usage = Some(usage);
        self
    }
}

/// One directory of the chain, with the interface its files follow and those files
/// kept open.
#[derive(Debug)]
pub(crate) struct CgroupDir {
    pub(crate) version: CgroupVersion,
    pub(crate) dir: PathBuf,
    limit: KeptFile,
    usage: KeptFile,
    stat: KeptFile,
}

impl CgroupDir {
    fn new(version: CgroupVersion, dir: PathBuf) -> Self {
        Self {
            limit: KeptFile::new(dir.join(version.limit_file())),
            usage: KeptFile::new(dir.join(version.usage_file())),
            stat: KeptFile::new(dir.join("memory.stat")),
            version,
            dir,
        }
    }
}

/// The directories whose limits apply to this process, leaf first, found once.
#[derive(Debug, Default)]
pub(crate) struct CgroupChain {
    dirs: Vec<CgroupDir>,
}

/// cgroup v1 writes "no limit" as the largest page-aligned `i64`
/// (9223372036854771712); anything at or above 2^62 bytes is treated as no limit.
const V1_UNLIMITED_FLOOR: u64 = 1 << 62;

/// A chain is at most this deep; deeper paths (or loops from a hostile mountinfo)
/// are cut here.
const MAX_DEPTH: usize = 64;

impl CgroupChain {
    /// Reads `/proc/self/cgroup` and `/proc/self/mountinfo` under `root` (`/`
    /// normally) and builds the chain. Missing or garbage files give an empty chain.
    pub(crate) fn discover(root: &Path) -> Self {
        let cgroup = fs::read_to_string(root.join("proc/self/cgroup")).unwrap_or_default();
        let mountinfo = fs::read_to_string(root.join("proc/self/mountinfo")).unwrap_or_default();
        let mut dirs = Vec::new();
        let mounts = parse_mountinfo(&mountinfo);
        for membership in parse_proc_cgroup(&cgroup) {
            let Some((mount, leaf)) = pick_mount(root, &mounts, &membership) else {
                continue;
            };
            let top = rooted(root, &mount.mount_point);
            let mut dir = rooted(root, &leaf);
            for _ in 0..MAX_DEPTH {
                dirs.push(CgroupDir::new(mount.version, dir.clone()));
                if dir == top || !dir.starts_with(&top) {
                    break;
                }
                match dir.parent() {
                    Some(parent) => dir = parent.to_path_buf(),
                    None => break,
                }
            }
        }
        Self { dirs }
    }

    /// The directories, leaf first.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn dirs(&self) -> &[CgroupDir] {
        &self.dirs
    }

    /// The process's own cgroup v2 directory, if it is in one (its
    /// `memory.pressure` is the cgroup's stall information).
    pub(crate) fn v2_leaf(&self) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|d| d.version == CgroupVersion::V2)
            .map(|d| d.dir.as_path())
    }

    /// Whether any hierarchy was found.
    pub(crate) fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// Reads every limit along the chain and returns the one with the least
    /// headroom: the directory whose working set is the largest share of its limit
    /// (each limit's OOM killer acts on its own figure, so a parent at 98 % ends the
    /// process although its leaf is at 10 % of a smaller limit). A directory whose
    /// usage is unreadable is ranked by `rss` (the process is below it, so its usage
    /// is at least that). `None` when no directory sets a (readable, non-zero)
    /// limit.
    pub(crate) fn read(&mut self, rss: u64) -> Option<CgroupMemory> {
        // (index, limit, working set, ratio) of the fullest directory so far.
        let mut best: Option<(usize, u64, Option<u64>, f64)> = None;
        for (i, d) in self.dirs.iter_mut().enumerate() {
            let Some(limit) = d.limit.read().and_then(|t| parse_limit(t, d.version)) else {
                continue;
            };
            let usage = d.usage.read().and_then(parse_u64).map(|usage| {
                let key = d.version.inactive_file_key();
                let inactive = d.stat.read().and_then(|t| parse_stat_key(t, key));
                usage.saturating_sub(inactive.unwrap_or(0))
            });
            let ratio = crate::sample::ratio(usage.unwrap_or(rss), limit);
            // Strictly fuller: on a tie the deeper directory (seen first) is kept.
            if best.is_none_or(|(_, _, _, r)| ratio > r) {
                best = Some((i, limit, usage, ratio));
            }
        }
        let (i, limit, usage, _) = best?;
        let d = &self.dirs[i];
        Some(CgroupMemory {
            version: d.version,
            path: d.dir.to_string_lossy().into_owned(),
            limit,
            usage,
        })
    }
}

/// `path` (absolute, as the kernel reports it) placed under `root`.
fn rooted(root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix("/") {
        Ok(relative) => root.join(relative),
        Err(_) => root.join(path),
    }
}

/// One line of `/proc/self/cgroup` that matters for memory.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Membership {
    pub(crate) version: CgroupVersion,
    /// The cgroup's path relative to its hierarchy's root (`/kubepods/pod1`).
    pub(crate) path: String,
}

/// Parses `/proc/self/cgroup`: `hierarchy-id:controllers:path` per line. Keeps the
/// v2 line (`0::/path`) and the v1 line whose controllers include `memory`.
pub(crate) fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !path.starts_with('/') {
            continue;
        }
        let version = if id == "0" && controllers.is_empty() {
            CgroupVersion::V2
        } else if controllers.split(',').any(|c| c == "memory") {
            CgroupVersion::V1
        } else {
            continue;
        };
        if out.iter().all(|m: &Membership| m.version != version) {
            out.push(Membership {
                version,
                path: path.to_owned(),
            });
        }
    }
    out
}

/// A cgroup file system mount from `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    pub(crate) version: CgroupVersion,
    /// The part of the hierarchy the mount shows (`/` unless inside a container
    /// without a cgroup namespace).
    pub(crate) root: PathBuf,
    /// Where it is mounted (`/sys/fs/cgroup`).
    pub(crate) mount_point: PathBuf,
}

impl CgroupMount {
    /// The directory of a cgroup whose hierarchy path is `path`. A path outside the
    /// mount's root (a container's view) maps to the mount point itself. A path
    /// with `..` (a process outside its cgroup namespace's root, reported as
    /// `/../sibling`) is not visible through any mount: `None`, never a directory
    /// outside the mount point.
    pub(crate) fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let path = Path::new(path);
        if path.components().any(|c| c == Component::ParentDir) {
            return None;
        }
        Some(match path.strip_prefix(&self.root) {
            Ok(rest) => self.mount_point.join(rest),
            Err(_) => self.mount_point.clone(),
        })
    }

    /// Whether the mount shows `path` (it lies at or below the mount's root).
    fn shows(&self, path: &str) -> bool {
        Path::new(path).starts_with(&self.root)
    }
}

/// The mount to read `membership`'s cgroup through, and the cgroup's directory
/// under it. A hierarchy may be mounted several times (a bind mount, a
/// container's view of a subtree next to the host's): the mount that shows the
/// cgroup and whose directory for it exists is preferred, the deepest root first;
/// then any that shows it; then the first mount of that version.
fn pick_mount<'m>(
    root: &Path,
    mounts: &'m [CgroupMount],
    membership: &Membership,
) -> Option<(&'m CgroupMount, PathBuf)> {
    let of_version = || mounts.iter().filter(|m| m.version == membership.version);
    let mut showing: Vec<&CgroupMount> =
        of_version().filter(|m| m.shows(&membership.path)).collect();
    // Deepest root first: it shows the least beyond the process's own cgroup.
    showing.sort_by_key(|m| std::cmp::Reverse(m.root.components().count()));
    let existing = showing.iter().find_map(|m| {
        let dir = m.dir_of(&membership.path)?;
        rooted(root, &dir).is_dir().then_some((*m, dir))
    });
    if existing.is_some() {
        return existing;
    }
    let mount = showing.first().copied().or_else(|| of_version().next())?;
    Some((mount, mount.dir_of(&membership.path)?))
}

/// Parses `/proc/self/mountinfo`, keeping the cgroup2 mounts and the cgroup v1
/// mounts that carry the memory controller. Fields:
/// `id parent major:minor root mount-point options [optional...] - fstype source super-options`.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split_whitespace().collect();
        let right: Vec<&str> = right.split_whitespace().collect();
        let (Some(root), Some(mount_point), Some(fstype)) =
            (left.get(3), left.get(4), right.first())
        else {
            continue;
        };
        let version = match *fstype {
            "cgroup2" => CgroupVersion::V2,
            "cgroup"
                if right
                    .get(2)
                    .is_some_and(|o| o.split(',').any(|c| c == "memory")) =>
            {
                CgroupVersion::V1
            }
            _ => continue,
        };
        out.push(CgroupMount {
            version,
            root: PathBuf::from(unescape_octal(root)),
            mount_point: PathBuf::from(unescape_octal(mount_point)),
        });
    }
    out
}

/// Undoes mountinfo's `\ooo` escapes (a space is `\040`). A malformed escape is kept
/// as written.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = bytes
                .get(i + 1..i + 4)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A decimal byte count with optional surrounding whitespace.
pub(crate) fn parse_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A limit file: `max` (v2) or a huge value (v1) means no limit; zero is ignored
/// (a cgroup with no memory at all cannot be running this process, so a zero is
/// treated as unreadable rather than as a limit to divide by).
pub(crate) fn parse_limit(text: &str, version: CgroupVersion) -> Option<u64> {
    let text = text.trim();
    if version == CgroupVersion::V2 && text == "max" {
        return None;
    }
    let limit = parse_u64(text)?;
    if limit == 0 || limit >= V1_UNLIMITED_FLOOR {
        return None;
    }
    Some(limit)
}

/// One `key value` line of a `memory.stat` file.
pub(crate) fn parse_stat_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| parse_u64(v)).flatten()
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_keeps_v2_and_the_v1_memory_line() {
        let text = "12:pids:/user.slice\n4:memory,foo:/docker/abc\n0::/system.slice/app.service\n";
        assert_eq!(
            parse_proc_cgroup(text),
            [
                Membership {
                    version: CgroupVersion::V1,
                    path: "/docker/abc".into()
                },
                Membership {
                    version: CgroupVersion::V2,
                    path: "/system.slice/app.service".into()
                },
            ]
        );
        // A v1 hierarchy without memory, and lines without a path, are ignored.
        assert!(parse_proc_cgroup("3:cpu,cpuacct:/x\n0::\nnonsense\n::\n").is_empty());
    }

    #[test]
    fn mountinfo_finds_cgroup_mounts_and_unescapes() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/cpu rw shared:5 - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/my\\040unified rw,relatime - cgroup2 cgroup2 rw
";
        let mounts = parse_mountinfo(text);
        assert_eq!(
            mounts,
            [
                CgroupMount {
                    version: CgroupVersion::V1,
                    root: "/docker/abc".into(),
                    mount_point: "/sys/fs/cgroup/memory".into(),
                },
                CgroupMount {
                    version: CgroupVersion::V2,
                    root: "/".into(),
                    mount_point: "/sys/fs/cgroup/my unified".into(),
                },
            ]
        );
        // The container's own cgroup maps to the mount point; a deeper one below it.
        assert_eq!(
            mounts[0].dir_of("/docker/abc").unwrap(),
            Path::new("/sys/fs/cgroup/memory")
        );
        assert_eq!(
            mounts[0].dir_of("/docker/abc/worker").unwrap(),
            Path::new("/sys/fs/cgroup/memory/worker")
        );
        assert_eq!(
            mounts[0].dir_of("/elsewhere").unwrap(),
            Path::new("/sys/fs/cgroup/memory")
        );
        assert_eq!(mounts[1].dir_of("/../sibling"), None);
        assert_eq!(mounts[1].dir_of("/a/../../b"), None);
    }

    #[test]
    fn limits_max_unlimited_zero_and_garbage() {
        assert_eq!(
            parse_limit("536870912\n", CgroupVersion::V2),
            Some(512 << 20)
        );
        assert_eq!(parse_limit("max\n", CgroupVersion::V2), None);
        assert_eq!(parse_limit("max", CgroupVersion::V1), None);
        assert_eq!(
            parse_limit("9223372036854771712\n", CgroupVersion::V1),
            None
        );
        assert_eq!(parse_limit("0", CgroupVersion::V2), None);
        assert_eq!(parse_limit("-1", CgroupVersion::V2), None);
        assert_eq!(parse_limit("12abc", CgroupVersion::V2), None);
        assert_eq!(parse_limit("", CgroupVersion::V2), None);
        assert_eq!(
            parse_limit("99999999999999999999999", CgroupVersion::V2),
            None
        );
    }

    #[test]
    fn stat_keys() {
        let v2 = "anon 100\nfile 200\ninactive_file 50\nactive_file 150\n";
        assert_eq!(parse_stat_key(v2, "inactive_file"), Some(50));
        assert_eq!(parse_stat_key(v2, "inactive"), None);
        assert_eq!(parse_stat_key("inactive_file x\n", "inactive_file"), None);
    }

    #[test]
    fn octal_escapes_malformed_are_kept() {
        assert_eq!(unescape_octal("a\\040b"), "a b");
        assert_eq!(unescape_octal("a\\09"), "a\\09");
        assert_eq!(unescape_octal("end\\"), "end\\");
        assert_eq!(unescape_octal("\\999x"), "\\999x");
    }

    /// A small deterministic generator, so arbitrary input is reproducible.
    fn garbage(seed: u64, len: usize) -> String {
        let alphabet = b"0123456789 :-/\\\nmaxcgroup2memory,.\t";
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alphabet[(x % alphabet.len() as u64) as usize] as char
            })
            .collect()
    }

    #[test]
    fn no_input_panics_any_parser() {
        let rounds = if cfg!(miri) { 20 } else { 2_000 };
        for seed in 0..rounds {
            let text = garbage(seed, (seed % 200) as usize);
            let _ = parse_proc_cgroup(&text);
            for m in parse_mountinfo(&text) {
                let _ = m.dir_of(&text);
            }
            let _ = parse_limit(&text, CgroupVersion::V1);
            let _ = parse_limit(&text, CgroupVersion::V2);
            let _ = parse_stat_key(&text, "inactive_file");
            let _ = unescape_octal(&text);
        }
    }

    #[test]
    fn the_chain_runs_from_the_leaf_up_to_the_mount_point() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2_parent_limit");
        let chain = CgroupChain::discover(&root);
        let dirs: Vec<_> = chain
            .dirs()
            .iter()
            .map(|d| (d.version, d.dir.strip_prefix(&root).unwrap().to_owned()))
            .collect();
        let v2 = CgroupVersion::V2;
        assert_eq!(
            dirs,
            [
                (
                    v2,
                    PathBuf::from("sys/fs/cgroup/kubepods.slice/pod1/container1")
                ),
                (v2, PathBuf::from("sys/fs/cgroup/kubepods.slice/pod1")),
                (v2, PathBuf::from("sys/fs/cgroup/kubepods.slice")),
                (v2, PathBuf::from("sys/fs/cgroup")),
            ]
        );
    }

    #[test]
    fn a_missing_root_gives_an_empty_chain() {
        let mut chain = CgroupChain::discover(Path::new("/nonexistent/heijunka-memory"));
        assert!(chain.is_empty());
        assert_eq!(chain.read(0), None);
    }
}
