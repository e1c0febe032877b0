//! Synthetic DICOM against an outside validator: every file of `ctmask synth --layout dicom`
//! passes `dciodvfy` (Debian's dicom3tools; `make test` installs it when run as root) with no
//! error and no warning, for each class of patient.

use std::process::Command;

use ctmask::data::synth::{ClassChoice, Layout, SynthOptions, run_synth};

#[test]
fn synthetic_dicom_passes_dciodvfy() {
    if Command::new("dciodvfy").output().is_err() {
        eprintln!("SKIPPED: dciodvfy is not installed (make test installs dicom3tools when run as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    run_synth(&SynthOptions {
        out: dir.path().to_path_buf(),
        layout: Layout::Dicom,
        count: 6,
        seed: 77,
        class: ClassChoice::Mixed,
        size: 128,
        preview: false,
        zoom: 0.0,
    })
    .expect("synth");
    let files = super::common::walk_files(dir.path(), "dcm");
    assert_eq!(files.len(), 6, "{files:?}");
    for f in &files {
        let o = Command::new("dciodvfy").arg(f).output().expect("dciodvfy runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let problems: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("Error") || l.starts_with("Warning"))
            .collect();
        assert!(problems.is_empty(), "{}: {problems:#?}", f.display());
        assert!(
            text.contains("CTImage"),
            "{}: not validated as a CT image: {text}",
            f.display()
        );
    }
}
