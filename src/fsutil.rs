//! Files that appear whole: write to a temporary name in the same directory, fsync, rename,
//! fsync the directory. Readers never see a partial file, also after a crash or power loss.
//! The one implementation for the daemon's outputs, the CLI's files, model files and logs.
//!
//! Temporary files are named `.ctmask-tmp-<pid>-<n>-<name>` ([`TEMP_PREFIX`]), so that the
//! daemon can sweep what a crash left behind at start-up.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of temporary files; leftovers of a crash are swept at start-up.
pub const TEMP_PREFIX: &str = ".ctmask-tmp-";

/// A file that could not be written, with the path involved.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl WriteError {
    fn at(path: &Path) -> impl Fn(std::io::Error) -> WriteError + '_ {
        move |source| WriteError {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the disk (or a quota) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self.source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        )
    }
}

impl From<WriteError> for crate::Error {
    fn from(e: WriteError) -> Self {
        crate::Error::io(e.path, e.source)
    }
}

/// Files staged in one folder, made visible together by `commit` (one folder fsync).
pub struct AtomicBatch {
    dir: PathBuf,
    staged: Vec<(PathBuf, PathBuf)>,
}

impl AtomicBatch {
    /// A batch in `dir`, creating it if needed (fsyncing its parent so the new folder survives
    /// a power loss).
    pub fn new(dir: &Path) -> Result<AtomicBatch, WriteError> {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(WriteError::at(dir))?;
            if let Some(parent) = parent_dir(dir) {
                sync_dir(parent)?;
            }
        }
        Ok(AtomicBatch::in_existing(dir))
    }

    /// A batch in `dir`, which must exist (writing fails otherwise).
    pub fn in_existing(dir: &Path) -> AtomicBatch {
        AtomicBatch {
            dir: dir.to_path_buf(),
            staged: Vec::new(),
        }
    }

    /// Writes and fsyncs `bytes` under a temporary name for `name`.
    pub fn add(&mut self, name: &str, bytes: &[u8]) -> Result<(), WriteError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!("{TEMP_PREFIX}{}-{n}-{name}", std::process::id()));
        let final_path = self.dir.join(name);
        // Registered first, so a failed write is cleaned up by Drop.
        self.staged.push((tmp.clone(), final_path));
        let mut f = File::create(&tmp).map_err(WriteError::at(&tmp))?;
        f.write_all(bytes).map_err(WriteError::at(&tmp))?;
        f.sync_all().map_err(WriteError::at(&tmp))?;
        Ok(())
    }

    /// Renames every staged file into place, then fsyncs the folder.
    pub fn commit(mut self) -> Result<(), WriteError> {
        let staged = std::mem::take(&mut self.staged);
        for (i, (tmp, final_path)) in staged.iter().enumerate() {
            if let Err(source) = std::fs::rename(tmp, final_path) {
                self.staged = staged[i..].to_vec();
                return Err(WriteError {
                    path: final_path.clone(),
                    source,
                });
            }
        }
        sync_dir(&self.dir)
    }
}

impl Drop for AtomicBatch {
    fn drop(&mut self) {
        for (tmp, _) in &self.staged {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(WriteError::at(dir))
}

/// The folder holding `dir`: "." for a relative name alone ("out", whose `parent()` is the
/// empty path), none for the root.
fn parent_dir(dir: &Path) -> Option<&Path> {
    match dir.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(Path::new(".")),
        p => p,
    }
}

/// The folder and the UTF-8 file name of `path`.
fn split(path: &Path) -> Result<(&Path, &str), WriteError> {
    let dir = parent_dir(path).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| WriteError {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a UTF-8 file name"),
        })?;
    Ok((dir, name))
}

/// Atomically replace `path` with `bytes`; its folder must exist.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let (dir, name) = split(path)?;
    let mut batch = AtomicBatch::in_existing(dir);
    batch.add(name, bytes)?;
    batch.commit()
}

/// Atomically replace `path` with `bytes`, creating its folder first if needed.
pub fn write_atomic_creating_dir(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let (dir, name) = split(path)?;
    let mut batch = AtomicBatch::new(dir)?;
    batch.add(name, bytes)?;
    batch.commit()
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        super::write_atomic(&p, b"{}").unwrap();
        super::write_atomic(&p, b"{\"x\":1}").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"x\":1}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(super::write_atomic(&dir.path().join("no/such/dir/x"), b"1").is_err());
    }

    /// `ctmask synth --out out` (a relative folder name alone) once failed with "cannot write
    /// : No such file or directory": the new folder's parent is the empty path, which is the
    /// working directory.
    #[test]
    fn the_parent_of_a_relative_folder_named_alone_is_the_working_directory() {
        use std::path::Path;
        assert_eq!(super::parent_dir(Path::new("out")), Some(Path::new(".")));
        assert_eq!(super::parent_dir(Path::new("a/out")), Some(Path::new("a")));
        assert_eq!(super::parent_dir(Path::new("/srv/out")), Some(Path::new("/srv")));
        assert_eq!(super::parent_dir(Path::new("/")), None);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new").join("x.txt");
        super::write_atomic_creating_dir(&p, b"1").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"1");
    }
}
