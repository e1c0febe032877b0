//! Helpers shared by the integration tests.

use std::path::PathBuf;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared folder beside the checkout (specs and real DICOM files).
pub fn shared() -> PathBuf {
    let p = repo().join("../shared");
    assert!(
        p.join("spec").is_dir(),
        "../shared/spec must exist beside the checkout"
    );
    p
}

/// A tiny lightweight configuration for fast CPU tests.
pub fn tiny_config() -> ctmask::model::ModelConfig {
    let mut c = ctmask::model::ModelConfig::preset("r18-t1").expect("preset exists");
    c.transform.min_size = 96;
    c.transform.max_size = 128;
    c.rpn.rpn_pre_nms_top_n_test = 200;
    c.rpn.rpn_post_nms_top_n_test = 100;
    c.rpn.rpn_pre_nms_top_n_train = 300;
    c.rpn.rpn_post_nms_top_n_train = 150;
    c.rpn.rpn_batch_size_per_image = 64;
    c.roi_heads.box_batch_size_per_image = 32;
    c
}

/// Files under `dir` (recursively) with extension `ext`, sorted.
pub fn walk_files(dir: &std::path::Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p, ext));
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
    out.sort();
    out
}
