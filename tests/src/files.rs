//! Files for and from transfers: deterministic pseudo-random data, source files in temporary
//! directories, SHA-256, the receiver's temporary part files, and listings of whole trees to
//! compare.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// One mebibyte.
pub const MIB: u64 = 1 << 20;

/// The suffix of a receiver's temporary part file.
pub const PART_SUFFIX: &str = ".p2pd-part";

/// xorshift64*: deterministic pseudo-random numbers (incompressible bytes, random choices that
/// a seed replays), so that no RNG crate is needed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// `len` pseudo-random (incompressible) bytes, deterministic per `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    Rng::new(seed).bytes(len)
}

/// Writes `size` pseudo-random (incompressible) bytes to `p`, deterministic per `seed`.
pub fn random_file(p: &Path, size: usize, seed: u64) {
    std::fs::write(p, random_bytes(size, seed))
        .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

/// Writes `data` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// A file `name` holding `content` in a fresh temporary directory (kept while the `TempDir`
/// lives).
pub fn temp_file(name: &str, content: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(dir.path(), name, content);
    (dir, path)
}

/// A file `name` of `size` pseudo-random bytes ([`random_file`]) in a fresh temporary
/// directory (kept while the `TempDir` lives).
pub fn temp_random_file(name: &str, size: usize, seed: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    random_file(&path, size, seed);
    (dir, path)
}

/// SHA-256 of a file, hex.
pub fn sha256_file(p: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    std::io::copy(&mut f, &mut h).expect("read");
    format!("{:x}", h.finalize())
}

/// Asserts that `got` has the content of `want` (by SHA-256).
pub fn assert_same_file(got: &Path, want: &Path) {
    assert_eq!(sha256_file(got), sha256_file(want), "{}", got.display());
}

/// Files under `dir` (at any depth) whose name marks a temporary part file.
pub fn part_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(PART_SUFFIX) {
                out.push(p);
            }
        }
    }
    out
}

/// Waits (at most `timeout`) until no temporary part file is left under `dir`; panics with
/// the ones left otherwise.
pub async fn wait_no_part_files(dir: &Path, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !part_files(dir).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "temporary files left: {:?}",
            part_files(dir)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every path below `dir` (relative, sorted), directories and hidden files included; empty
/// if `dir` is missing.
pub fn paths_under(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.insert(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(base, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// One entry of [`tree`]: relative path, SHA-256 (files; `None` for a directory) and
/// permission bits.
pub type TreeEntry = (String, Option<String>, u32);

/// The directories and regular files under `dir` (symlinks left out), sorted, with content
/// hashes and modes: two trees with equal listings hold the same files.
pub fn tree(dir: &Path) -> Vec<TreeEntry> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                out.push((rel, None, meta.permissions().mode() & 0o777));
                stack.push(p);
            } else if meta.is_file() {
                out.push((
                    rel,
                    Some(sha256_file(&p)),
                    meta.permissions().mode() & 0o777,
                ));
            }
        }
    }
    out.sort();
    out
}
