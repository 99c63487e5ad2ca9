//! What a transfer carries: the list of files and directories under the paths the user sent
//! (sender side), and the validation of a peer's list before anything is written (receiver
//! side).
//!
//! Decisions: a top-level path that is a symlink is followed (the user named it); symlinks and
//! special files found inside a folder are skipped with a warning — nothing outside the folder
//! the user chose is ever sent. Paths on the wire are relative, `/`-separated and start with
//! one of the transfer's roots.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use p2p_proto::wire::v1::{FileEntry, TransferInfo, TransferMode};

use crate::transfer::SendOptions;

/// Longest relative path accepted from a peer, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest path component accepted from a peer, in bytes.
pub const MAX_COMPONENT_LEN: usize = 255;
/// Most files in one transfer.
pub const MAX_FILES: usize = 1_000_000;

/// A file to send: where it is here and how it is described on the wire.
#[derive(Debug, Clone)]
pub struct LocalFile {
    /// Absolute path on this machine.
    pub source: PathBuf,
    /// Its wire description.
    pub entry: FileEntry,
}

/// Everything one send carries.
#[derive(Debug, Clone, Default)]
pub struct LocalManifest {
    /// Top-level names.
    pub roots: Vec<String>,
    /// Whether any root is a folder.
    pub has_folder: bool,
    /// Files, in the order they are sent.
    pub files: Vec<LocalFile>,
    /// Directories to create (relative), parents before children.
    pub dirs: Vec<String>,
    /// Entries left out (symlinks, special files), for a warning.
    pub skipped: Vec<PathBuf>,
    /// Sum of file sizes.
    pub total_bytes: u64,
}

/// Errors of building or validating a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A path the user gave does not exist.
    #[error("no such file or directory: {0}")]
    NotFound(PathBuf),
    /// A path could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The user's paths are not usable (no name, duplicate names, special file).
    #[error("{0}")]
    InvalidSource(String),
    /// A peer's manifest breaks a rule; nothing is written.
    #[error("unsafe or invalid manifest from peer: {0}")]
    Invalid(String),
}

impl LocalManifest {
    /// The offer of this manifest for transfer `id`.
    pub fn offer(&self, id: &str, opts: SendOptions, resume: bool) -> TransferInfo {
        TransferInfo {
            transfer_id: id.to_owned(),
            mode: if self.has_folder {
                TransferMode::Folder as i32
            } else {
                TransferMode::File as i32
            },
            roots: self.roots.clone(),
            files: self.files.iter().map(|f| f.entry.clone()).collect(),
            dirs: self.dirs.clone(),
            chunk_size: opts.chunk_size,
            window: opts.window,
            resume,
            total_bytes: self.total_bytes,
            attempt: 0,
        }
    }

    /// The manifest of a recorded offer and its local sources (one per file, in order).
    pub fn from_offer(info: &TransferInfo, sources: Vec<PathBuf>) -> Self {
        LocalManifest {
            roots: info.roots.clone(),
            has_folder: info.mode == TransferMode::Folder as i32,
            files: info
                .files
                .iter()
                .zip(sources)
                .map(|(entry, source)| LocalFile {
                    source,
                    entry: entry.clone(),
                })
                .collect(),
            dirs: info.dirs.clone(),
            skipped: Vec::new(),
            total_bytes: info.files.iter().map(|f| f.size).sum(),
        }
    }

    /// Walks `paths` (absolute) and lists what to send.
    ///
    /// # Errors
    /// [`ManifestError::NotFound`] for a missing path, `InvalidSource` for unusable ones, `Io`
    /// for unreadable directories or files.
    pub fn build(paths: &[PathBuf]) -> Result<Self, ManifestError> {
        if paths.is_empty() {
            return Err(ManifestError::InvalidSource("no paths to send".into()));
        }
        let mut m = LocalManifest::default();
        let mut names = HashSet::new();
        for path in paths {
            let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ManifestError::NotFound(path.clone()),
                _ => ManifestError::Io {
                    path: path.clone(),
                    source: e,
                },
            })?;
            let real = std::fs::canonicalize(path).map_err(|source| ManifestError::Io {
                path: path.clone(),
                source,
            })?;
            let name = real
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| {
                    ManifestError::InvalidSource(format!(
                        "{} has no usable file name",
                        path.display()
                    ))
                })?
                .to_owned();
            if !names.insert(name.clone()) {
                return Err(ManifestError::InvalidSource(format!(
                    "two paths share the name {name:?}; send them in separate transfers"
                )));
            }
            if meta.is_dir() {
                m.has_folder = true;
                m.dirs.push(name.clone());
                m.walk(&real, &name)?;
            } else if meta.is_file() {
                m.push_file(real, name.clone(), &meta);
            } else {
                return Err(ManifestError::InvalidSource(format!(
                    "{} is not a regular file or directory",
                    path.display()
                )));
            }
            m.roots.push(name);
        }
        Ok(m)
    }

    fn push_file(&mut self, source: PathBuf, rel: String, meta: &std::fs::Metadata) {
        self.total_bytes += meta.len();
        self.files.push(LocalFile {
            source,
            entry: FileEntry {
                path: rel,
                size: meta.len(),
                mode: meta.permissions().mode() & 0o7777,
                mtime_sec: meta.mtime(),
                mtime_nsec: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
            },
        });
    }

    fn walk(&mut self, dir: &Path, rel: &str) -> Result<(), ManifestError> {
        let io = |source| ManifestError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .collect::<Result<_, _>>()
            .map_err(io)?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                tracing::warn!(path = %path.display(), "skipping a name that is not UTF-8");
                self.skipped.push(path);
                continue;
            };
            let meta = std::fs::symlink_metadata(&path).map_err(|source| ManifestError::Io {
                path: path.clone(),
                source,
            })?;
            let child = format!("{rel}/{name}");
            if meta.file_type().is_symlink() {
                tracing::warn!(path = %path.display(), "skipping symlink inside a folder");
                self.skipped.push(path);
            } else if meta.is_dir() {
                self.dirs.push(child.clone());
                self.walk(&path, &child)?;
            } else if meta.is_file() {
                self.push_file(path, child, &meta);
            } else {
                tracing::warn!(path = %path.display(), "skipping special file");
                self.skipped.push(path);
            }
        }
        Ok(())
    }
}

/// Checks one relative path from a peer: `/`-separated normal components only.
///
/// # Errors
/// [`ManifestError::Invalid`] naming the path and the rule.
pub fn check_relative(path: &str) -> Result<Vec<&str>, ManifestError> {
    let bad = |why: &str| ManifestError::Invalid(format!("path {path:?}: {why}"));
    if path.is_empty() {
        return Err(bad("empty"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(bad("too long"));
    }
    if path.starts_with('/') {
        return Err(bad("absolute paths are not allowed"));
    }
    let parts: Vec<&str> = path.split('/').collect();
    for p in &parts {
        if p.is_empty() {
            return Err(bad("empty component"));
        }
        if *p == "." || *p == ".." {
            return Err(bad("`.` and `..` are not allowed"));
        }
        if p.len() > MAX_COMPONENT_LEN {
            return Err(bad("component too long"));
        }
        if p.contains('\\') || p.contains('\0') || p.chars().any(char::is_control) {
            return Err(bad("backslash, NUL or control character"));
        }
        // Belt and braces: the platform's own parser must agree that this is a plain name.
        if !matches!(Path::new(p).components().next(), Some(Component::Normal(_)))
            || Path::new(p).components().count() != 1
        {
            return Err(bad("not a plain name"));
        }
    }
    Ok(parts)
}

/// Validates a peer's transfer description before anything is written: every path relative
/// and plain, under a declared root, no duplicates, no file where a directory must go, sizes
/// adding up, chunk size and window within `max_chunk`/`max_window`.
///
/// # Errors
/// [`ManifestError::Invalid`] naming the first violation.
pub fn validate(info: &TransferInfo, max_chunk: u32, max_window: u32) -> Result<(), ManifestError> {
    let bad = |why: String| ManifestError::Invalid(why);
    if info.roots.is_empty() {
        return Err(bad("no roots".into()));
    }
    if info.files.len() > MAX_FILES || info.dirs.len() > MAX_FILES {
        return Err(bad(format!("more than {MAX_FILES} entries")));
    }
    if info.chunk_size < crate::transfer::MIN_CHUNK || info.chunk_size > max_chunk {
        return Err(bad(format!(
            "chunk size {} outside {}..={max_chunk}",
            info.chunk_size,
            crate::transfer::MIN_CHUNK
        )));
    }
    if info.window == 0 || info.window > max_window {
        return Err(bad(format!(
            "window {} outside 1..={max_window}",
            info.window
        )));
    }
    if u64::from(info.chunk_size) * u64::from(info.window) > crate::transfer::MAX_IN_FLIGHT_BYTES {
        return Err(bad(format!(
            "chunk size {} × window {} exceeds the in-flight limit",
            info.chunk_size, info.window
        )));
    }
    let mut roots = HashSet::new();
    for r in &info.roots {
        let parts = check_relative(r)?;
        if parts.len() != 1 {
            return Err(bad(format!("root {r:?} is not a single name")));
        }
        if !roots.insert(r.as_str()) {
            return Err(bad(format!("duplicate root {r:?}")));
        }
    }
    let mut dirs: HashSet<&str> = HashSet::new();
    for d in &info.dirs {
        let parts = check_relative(d)?;
        if !roots.contains(parts[0]) {
            return Err(bad(format!(
                "directory {d:?} is outside the transfer's roots"
            )));
        }
        if !dirs.insert(d.as_str()) {
            return Err(bad(format!("duplicate directory {d:?}")));
        }
    }
    let mut files: HashSet<&str> = HashSet::new();
    let mut total: u64 = 0;
    for f in &info.files {
        let parts = check_relative(&f.path)?;
        if !roots.contains(parts[0]) {
            return Err(bad(format!(
                "file {:?} is outside the transfer's roots",
                f.path
            )));
        }
        if dirs.contains(f.path.as_str()) || !files.insert(f.path.as_str()) {
            return Err(bad(format!("duplicate entry {:?}", f.path)));
        }
        total = total
            .checked_add(f.size)
            .ok_or_else(|| bad("sizes overflow".into()))?;
    }
    // Every parent of an entry must be a declared directory, never a file; by induction every
    // ancestor is then one too (each declared directory's own parent is checked). One lookup
    // per entry keeps this linear.
    for p in files.iter().copied().chain(dirs.iter().copied()) {
        if let Some((parent, _)) = p.rsplit_once('/') {
            if files.contains(parent) {
                return Err(bad(format!("{p:?} lies under the file {parent:?}")));
            }
            if !dirs.contains(parent) {
                return Err(bad(format!(
                    "{p:?} lies under {parent:?}, which is not a declared directory"
                )));
            }
        }
    }
    for r in &info.roots {
        if dirs.contains(r.as_str()) && files.contains(r.as_str()) {
            return Err(bad(format!("root {r:?} is both a file and a directory")));
        }
    }
    if total != info.total_bytes {
        return Err(bad(format!(
            "total_bytes {} does not match the files' sizes {total}",
            info.total_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(files: &[&str], dirs: &[&str], roots: &[&str]) -> TransferInfo {
        TransferInfo {
            transfer_id: "t".into(),
            mode: 1,
            roots: roots.iter().map(|s| s.to_string()).collect(),
            files: files
                .iter()
                .map(|p| FileEntry {
                    path: p.to_string(),
                    size: 1,
                    ..Default::default()
                })
                .collect(),
            dirs: dirs.iter().map(|s| s.to_string()).collect(),
            chunk_size: 1 << 20,
            window: 8,
            resume: false,
            total_bytes: files.len() as u64,
            attempt: 0,
        }
    }

    #[test]
    fn safe_manifests_pass() {
        validate(
            &info(
                &["a/b/c.txt", "a/ü ñ.bin"],
                &["a", "a/b", "a/empty"],
                &["a"],
            ),
            1 << 24,
            64,
        )
        .unwrap();
        validate(&info(&["f.txt"], &[], &["f.txt"]), 1 << 24, 64).unwrap();
    }

    #[test]
    fn unsafe_paths_are_rejected() {
        for (files, dirs, roots) in [
            (vec!["../escape"], vec![], vec![".."]),
            (vec!["a/../../escape"], vec!["a"], vec!["a"]),
            (vec!["/etc/passwd"], vec!["a"], vec!["a"]),
            (vec!["a//b"], vec!["a"], vec!["a"]),
            (vec!["a/./b"], vec!["a"], vec!["a"]),
            (vec!["b/x"], vec!["a"], vec!["a"]),
            (vec!["a/x", "a/x"], vec!["a"], vec!["a"]),
            (vec!["a/x", "a/x/y"], vec!["a"], vec!["a"]),
            (vec!["a/x\\..\\y"], vec!["a"], vec!["a"]),
            (vec!["a/nul\0"], vec!["a"], vec!["a"]),
            (vec![""], vec![], vec![""]),
            (vec!["a/b"], vec!["a", "/abs"], vec!["a"]),
            (vec!["a/b"], vec![], vec!["a/b"]),
            (vec!["a/b/c"], vec!["a"], vec!["a"]),
            (vec!["a/x"], vec![], vec!["a"]),
        ] {
            let i = info(&files, &dirs, &roots);
            assert!(
                validate(&i, 1 << 24, 64).is_err(),
                "{files:?} {dirs:?} {roots:?} accepted"
            );
        }
    }

    #[test]
    fn sizes_and_limits_are_checked() {
        let mut i = info(&["a"], &[], &["a"]);
        i.total_bytes = 5;
        assert!(validate(&i, 1 << 24, 64).is_err());
        let mut i = info(&["a"], &[], &["a"]);
        i.window = 65;
        assert!(validate(&i, 1 << 24, 64).is_err());
        let mut i = info(&["a"], &[], &["a"]);
        i.chunk_size = 1 << 25;
        assert!(validate(&i, 1 << 24, 64).is_err());
        let mut i = info(&["a"], &[], &["a"]);
        i.chunk_size = 16 << 20;
        i.window = 64;
        assert!(
            validate(&i, 16 << 20, 1024).is_err(),
            "1 GiB in flight is refused"
        );
    }

    #[test]
    fn build_walks_folders_skipping_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("top");
        std::fs::create_dir_all(root.join("sub/empty")).unwrap();
        std::fs::write(root.join("sub/x.txt"), b"hello").unwrap();
        std::fs::write(root.join("a.txt"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let m = LocalManifest::build(std::slice::from_ref(&root)).unwrap();
        assert_eq!(m.roots, vec!["top"]);
        let files: Vec<&str> = m.files.iter().map(|f| f.entry.path.as_str()).collect();
        assert_eq!(files, vec!["top/a.txt", "top/sub/x.txt"]);
        assert_eq!(m.dirs, vec!["top", "top/sub", "top/sub/empty"]);
        assert_eq!(m.skipped, vec![root.join("link")]);
        assert_eq!(m.total_bytes, 5);
        assert!(matches!(
            LocalManifest::build(&[dir.path().join("nope")]),
            Err(ManifestError::NotFound(_))
        ));
    }
}
