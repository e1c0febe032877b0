//! Helpers shared by the unit tests of several modules (compiled for tests only).

use std::path::{Path, PathBuf};

/// `../shared/data/dicom` next to the crate (or next to its parent for scratch crates): the real
/// DICOM test files of `shared/data/dicom/README.md`.
pub(crate) fn shared_dicom_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        root.join("../shared/data/dicom"),
        root.join("../../shared/data/dicom"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .expect("shared/data/dicom must sit beside the repository")
}

/// One of the real DICOM test files, by name.
pub(crate) fn shared_dicom(name: &str) -> PathBuf {
    shared_dicom_dir().join(name)
}
