//! Opening inputs safely. A watch folder is writable by others (scanners, PACS, users), so what a
//! queued path names can change before the daemon reads it. Every input is opened once, by
//! `openat2` beneath its watch folder with `RESOLVE_NO_SYMLINKS` (no symlink in any component,
//! never out of the folder) and `O_NOFOLLOW | O_NONBLOCK` (a FIFO does not block the open), must
//! be a regular file by `fstat` of that descriptor, and is read up to the size limit only: a path
//! swapped for a link to `/dev/zero`, a FIFO or a device is refused, never followed or hung on.
//! Where `openat2` is missing (kernel < 5.6, or a seccomp filter), `openat` with `O_NOFOLLOW`
//! relative to the watch folder's descriptor refuses a symlink as the last component.
//!
//! Written here rather than taken from a crate: the few crates offering `openat2` wrappers
//! (`openat2`, `cap-std`) bring a whole capability-filesystem API for three system calls.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Why an input could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("not inside a watch folder")]
    Outside,
    #[error("a symbolic link (links are never followed)")]
    Symlink,
    #[error("not a regular file ({0})")]
    NotRegular(&'static str),
    #[error("file too large: {size} bytes > max_file_bytes {max}")]
    TooLarge { size: u64, max: u64 },
    #[error("cannot read file: {0}")]
    Io(#[from] std::io::Error),
}

impl InputError {
    /// Whether the same path would fail again the same way (not a vanished or busy file).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, InputError::Io(_))
    }
}

/// `path` made absolute and canonical where it exists (symlinks resolved, `..` removed); the
/// part that does not exist yet is appended as written, without `.` and `..` components.
pub fn canonical(path: &Path) -> PathBuf {
    if let Ok(c) = path.canonicalize() {
        return c;
    }
    let mut rest = Vec::new();
    let mut head = path.to_path_buf();
    while !head.exists() {
        match (head.file_name(), head.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                head = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut out = head.canonicalize().unwrap_or(head);
    for part in rest.into_iter().rev() {
        out.push(part);
    }
    out
}

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn last_os_error(rc: libc::c_long) -> std::io::Result<OwnedFd> {
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a non-negative return of open/openat2 is a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// Opens `rel` beneath the folder `dir` without following any symlink.
fn open_beneath(dir: &OwnedFd, rel: &Path) -> Result<OwnedFd, InputError> {
    let c_rel = cstr(rel)?;
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // openat2 answers EAGAIN when a rename elsewhere raced with a scoped lookup: try again.
    let mut tries = 0;
    let opened = loop {
        // SAFETY: openat2 reads the path and the open_how struct we own, of the size we pass.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c_rel.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        let r = last_os_error(rc);
        tries += 1;
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < 20 => continue,
            r => break r,
        }
    };
    let fd = match opened {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => {
            // SAFETY: openat on a descriptor we own and a valid C string.
            let rc = unsafe { libc::openat(dir.as_raw_fd(), c_rel.as_ptr(), flags) };
            last_os_error(libc::c_long::from(rc))
        }
        other => other,
    };
    fd.map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => InputError::Symlink,
        Some(libc::EXDEV) => InputError::Outside,
        _ => InputError::Io(e),
    })
}

/// Opens an input under one of `roots` (canonical watch folders): a regular file, no symlink on
/// the way, no larger than `max` bytes by `fstat`. Returns the open file and its size.
pub fn open_input(path: &Path, roots: &[PathBuf], max: u64) -> Result<(File, u64), InputError> {
    let (root, rel) = roots
        .iter()
        .find_map(|r| path.strip_prefix(r).ok().map(|rel| (r, rel)))
        .ok_or(InputError::Outside)?;
    if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(InputError::Outside);
    }
    let c_root = cstr(root)?;
    // SAFETY: open of a valid C string; the descriptor is owned below.
    let rc = unsafe {
        libc::open(
            c_root.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    let dir = last_os_error(libc::c_long::from(rc))?;
    let fd = open_beneath(&dir, rel)?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    let ft = meta.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_dir() {
            "a folder"
        } else {
            "special file"
        };
        return Err(InputError::NotRegular(kind));
    }
    if meta.len() > max {
        return Err(InputError::TooLarge {
            size: meta.len(),
            max,
        });
    }
    Ok((file, meta.len()))
}

/// Reads a whole input (see [`open_input`]); a file that grew past `max` meanwhile is refused.
pub fn read_input(path: &Path, roots: &[PathBuf], max: u64) -> Result<Vec<u8>, InputError> {
    let (file, size) = open_input(path, roots, max)?;
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(InputError::TooLarge {
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

/// Streamed SHA-256 of an input (see [`open_input`]), reading at most `max` bytes.
pub fn hash_input(path: &Path, roots: &[PathBuf], max: u64) -> Result<String, InputError> {
    let (file, _) = open_input(path, roots, max)?;
    let (hash, total) = crate::digest::sha256_reader(file.take(max.saturating_add(1)))?;
    if total > max {
        return Err(InputError::TooLarge { size: total, max });
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn regular_files_beneath_a_root_are_read_and_everything_else_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = canonical(&dir.path().join("in"));
        let outside = dir.path().join("secret");
        std::fs::create_dir_all(root.join("sub")).expect("dirs");
        std::fs::write(&outside, b"outside").expect("outside");
        std::fs::write(root.join("sub/a.dcm"), b"0123456789").expect("a");
        let roots = [root.clone()];
        assert_eq!(
            read_input(&root.join("sub/a.dcm"), &roots, 10).expect("read"),
            b"0123456789"
        );
        assert_eq!(
            hash_input(&root.join("sub/a.dcm"), &roots, 10).expect("hash"),
            crate::digest::sha256_hex(b"0123456789")
        );
        let err = |p: &Path, max: u64| read_input(p, &roots, max).expect_err("refused").to_string();
        assert_eq!(
            err(&root.join("sub/a.dcm"), 9),
            "file too large: 10 bytes > max_file_bytes 9"
        );
        // A link to a file outside, to /dev/zero, and a folder link: never followed.
        symlink(&outside, root.join("link.dcm")).expect("symlink");
        symlink("/dev/zero", root.join("zero.dcm")).expect("symlink");
        symlink(dir.path(), root.join("up")).expect("dir symlink");
        for p in ["link.dcm", "zero.dcm", "up/secret"] {
            assert_eq!(
                err(&root.join(p), 1 << 20),
                "a symbolic link (links are never followed)"
            );
        }
        assert_eq!(err(&outside, 1 << 20), "not inside a watch folder");
        assert_eq!(
            err(&root.join("sub/../../secret"), 1 << 20),
            "not inside a watch folder"
        );
        // A FIFO is refused at once, not waited on.
        let fifo = root.join("fifo.dcm");
        let c = cstr(&fifo).expect("cstr");
        // SAFETY: mkfifo of a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(err(&fifo, 1 << 20), "not a regular file (a FIFO)");
        assert!(read_input(&fifo, &roots, 1).expect_err("fifo").is_permanent());
        assert!(
            !read_input(&root.join("gone"), &roots, 1)
                .expect_err("missing")
                .is_permanent()
        );
        assert_eq!(err(&root.join("sub"), 1 << 20), "not a regular file (a folder)");
    }

    #[test]
    fn canonical_resolves_links_and_missing_tails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().canonicalize().expect("canonical").join("real");
        std::fs::create_dir(&real).expect("real");
        symlink(&real, dir.path().join("alias")).expect("alias");
        assert_eq!(canonical(&dir.path().join("alias")), real);
        assert_eq!(canonical(&dir.path().join("alias/x/y")), real.join("x/y"));
        assert_eq!(canonical(&dir.path().join("alias/../real/z")), real.join("z"));
    }
}
