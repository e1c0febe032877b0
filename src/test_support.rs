//! Helpers shared by the unit tests of several modules (compiled for tests only).

use std::path::{Path, PathBuf};

/// `../shared/data/dicom` next to the crate (or next to its parent for scratch crates): the real
/// DICOM test files of `shared/data/dicom/README.md`.
pub(crate) fn shared_dicom_dir() -> PathBuf {
    first_dir(
        &["../shared/data/dicom", "../../shared/data/dicom"],
        "shared/data/dicom must sit beside the repository",
    )
}

/// The first of `candidates` (relative to the crate) that is a folder; panics with `missing`.
pub(crate) fn first_dir(candidates: &[&str], missing: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    candidates
        .iter()
        .map(|c| root.join(c))
        .find(|p| p.is_dir())
        .expect(missing)
}

/// One of the real DICOM test files, by name.
pub(crate) fn shared_dicom(name: &str) -> PathBuf {
    shared_dicom_dir().join(name)
}
