//! Where received files go: the destination directory, the final top-level names (a name that
//! exists already is never overwritten: the new one becomes `name (1).ext`, `name (2).ext`, …),
//! the directories below them, and the hidden names of temporary files beside their final
//! places.
//!
//! Relative paths come validated (see `manifest`); on top of that, nothing here follows a
//! symlink found inside the destination, so a planted one cannot redirect writes.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::PlaceError;

/// Most attempts at finding a free `name (n)` before giving up.
const MAX_RENAMES: u32 = 10_000;

/// What is to be placed below a destination, as the place layer sees it: `/`-separated
/// relative paths whose first component is a root.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout<'a> {
    /// The top-level names, files and folders.
    pub(crate) roots: &'a [String],
    /// Every directory, parents before children; a folder root is one without a `/`.
    pub(crate) dirs: &'a [String],
}

/// Where each root of a transfer lands.
#[derive(Debug, Clone)]
pub(crate) struct Destination {
    /// The directory the user chose.
    pub(crate) dir: PathBuf,
    /// Root name as given → final top-level name (differs on a collision). File roots are
    /// resolved when their file is complete; folder roots are reserved up front.
    pub(crate) roots: HashMap<String, String>,
}

/// Creates the destination directory, reserves a free name for every folder root and creates
/// the directories of `layout` (including empty ones). Never follows a symlink inside the
/// destination.
///
/// # Errors
/// [`PlaceError::Destination`] naming the path that could not be created.
pub(crate) fn prepare(dir: &Path, layout: Layout<'_>) -> Result<Destination, PlaceError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PlaceError::Destination { path, source }
    };
    fs::create_dir_all(dir).map_err(err(dir))?;
    let folder_roots: HashSet<&str> = layout
        .dirs
        .iter()
        .filter(|d| !d.contains('/'))
        .map(String::as_str)
        .collect();
    let mut roots = HashMap::new();
    for root in layout.roots {
        if folder_roots.contains(root.as_str()) {
            let name = reserve_dir(dir, root).map_err(err(&dir.join(root)))?;
            roots.insert(root.clone(), name);
        } else {
            roots.insert(root.clone(), root.clone());
        }
    }
    let dest = Destination {
        dir: dir.to_path_buf(),
        roots,
    };
    for d in layout.dirs {
        if !d.contains('/') {
            continue;
        }
        let path = dest.path_of(d);
        make_dir_no_follow(&dest.dir, &path).map_err(err(&path))?;
    }
    Ok(dest)
}

impl Destination {
    /// The destination of a resumed transfer: the directory and root names chosen when it
    /// was accepted. The directory must exist; directories below it that went missing are
    /// created again (never through a symlink).
    ///
    /// # Errors
    /// [`PlaceError::Destination`] naming the path that could not be created.
    pub(crate) fn restore(
        dir: &Path,
        roots: HashMap<String, String>,
        layout: Layout<'_>,
    ) -> Result<Destination, PlaceError> {
        let dest = Destination {
            dir: dir.to_path_buf(),
            roots,
        };
        // The destination itself must still be there: if it went (an unmounted disk), the
        // transfer must not quietly start again somewhere else.
        if !dir.is_dir() {
            return Err(PlaceError::Destination {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the destination directory is gone",
                ),
            });
        }
        for d in layout.dirs {
            let path = dest.path_of(d);
            make_dir_no_follow(&dest.dir, &path).map_err(|source| PlaceError::Destination {
                path: path.clone(),
                source,
            })?;
        }
        Ok(dest)
    }

    /// The local path of a relative path (after root renaming).
    pub(crate) fn path_of(&self, rel: &str) -> PathBuf {
        let (root, rest) = rel.split_once('/').unwrap_or((rel, ""));
        let root = self.roots.get(root).map(String::as_str).unwrap_or(root);
        let mut p = self.dir.join(root);
        if !rest.is_empty() {
            p.push(rest);
        }
        p
    }

    /// The hidden temporary name of file `fi` (at `rel`) of transfer `id`, next to its final
    /// place: `.<id>-<fi>.p2pd-part`. `None` for a path without a parent.
    pub(crate) fn temp_path(&self, id: &str, fi: usize, rel: &str) -> Option<PathBuf> {
        let final_path = self.path_of(rel);
        // Not derived from the file's name, so that a name near the 255-byte limit still fits;
        // the whole (canonical UUID) id, so that no other transfer's offer can name it.
        Some(final_path.parent()?.join(format!(".{id}-{fi}.p2pd-part")))
    }
}

/// Whether a file at `rel` is a top-level one, which takes the first free name of its own,
/// `name (1).ext`, … (see [`file_names`]); a file in a folder takes its name or fails.
pub(crate) fn is_top_level(rel: &str) -> bool {
    !rel.contains('/')
}

/// `name`, `name (1)`, … for a directory, created atomically so that two transfers cannot pick
/// the same one.
fn reserve_dir(dir: &Path, name: &str) -> std::io::Result<String> {
    for n in 0..MAX_RENAMES {
        let candidate = numbered(name, n, false);
        match fs::DirBuilder::new()
            .mode(0o755)
            .create(dir.join(&candidate))
        {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "no free name",
    ))
}

/// `report.pdf` → `report (1).pdf`; folders and names without extension get the suffix at the
/// end.
fn numbered(name: &str, n: u32, is_file: bool) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rfind('.') {
        Some(dot) if is_file && dot > 0 => format!("{} ({n}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} ({n})"),
    }
}

/// Creates `path` (below `base`) component by component, refusing to pass through anything
/// that is not a real directory — a symlink planted in the destination cannot redirect writes.
fn make_dir_no_follow(base: &Path, path: &Path) -> std::io::Result<()> {
    let rel = path
        .strip_prefix(base)
        .map_err(|_| std::io::Error::other("path outside destination"))?;
    let mut cur = base.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", cur.display()),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new().mode(0o755).create(&cur)?
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `wanted`, then `name (1).ext`, `name (2).ext`, … beside it (at most `MAX_RENAMES`).
pub(crate) fn file_names(wanted: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    let dir = wanted.parent().unwrap_or(Path::new("."));
    let name = wanted
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (0..MAX_RENAMES).map(move |n| dir.join(numbered(&name, n, true)))
}

/// Whether the temporary file `temp` is already linked under its final name `wanted` (or, for
/// a top-level file, under one of its numbered names): a crash came between placing it and
/// recording it.
pub(crate) fn placed(temp: &Path, wanted: &Path, numbered_names: bool) -> bool {
    let Ok(t) = fs::symlink_metadata(temp) else {
        return false;
    };
    let same = |p: &Path| {
        fs::symlink_metadata(p).map(|m| (m.dev(), m.ino())).ok() == Some((t.dev(), t.ino()))
    };
    if !numbered_names {
        return same(wanted);
    }
    for candidate in file_names(wanted) {
        if fs::symlink_metadata(&candidate).is_err() {
            return false;
        }
        if same(&candidate) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::place::partfile::PartFile;
    use std::io::Write;

    #[test]
    fn numbered_names_keep_the_extension() {
        assert_eq!(numbered("report.pdf", 0, true), "report.pdf");
        assert_eq!(numbered("report.pdf", 1, true), "report (1).pdf");
        assert_eq!(numbered(".bashrc", 2, true), ".bashrc (2)");
        assert_eq!(numbered("photos", 1, false), "photos (1)");
        assert_eq!(numbered("a.tar.gz", 1, true), "a.tar (1).gz");
    }

    #[test]
    fn folder_roots_are_reserved_and_links_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("photos")).unwrap();
        let roots = ["photos".to_owned()];
        let dirs = ["photos".to_owned(), "photos/2024".to_owned()];
        let d = prepare(
            dir.path(),
            Layout {
                roots: &roots,
                dirs: &dirs,
            },
        )
        .unwrap();
        assert_eq!(d.roots["photos"], "photos (1)");
        assert!(dir.path().join("photos (1)/2024").is_dir());

        let temp = PartFile::create_named(dir.path().join("t")).unwrap();
        (&*temp.file).write_all(b"new").unwrap();
        fs::write(dir.path().join("a.txt"), b"old").unwrap();
        let placed = temp
            .link_free_name(file_names(&dir.path().join("a.txt")), false)
            .unwrap();
        assert_eq!(placed, dir.path().join("a (1).txt"));
        assert_eq!(fs::read(dir.path().join("a.txt")).unwrap(), b"old");
    }

    #[test]
    fn a_symlink_in_the_destination_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::os::unix::fs::symlink(outside.path(), base.join("evil")).unwrap();
        assert!(make_dir_no_follow(base, &base.join("evil/sub")).is_err());
        assert!(!outside.path().join("sub").exists());
    }
}
