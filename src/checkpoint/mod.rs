//! Reads PyTorch `torch.save` checkpoints (`.pth`) without Python or libtorch, so the original
//! project's released weights load directly. Both containers are supported (zip, torch >= 1.6,
//! and the legacy format torch 1.1 wrote) with float32/float16/bfloat16/float64/int64/int32/
//! int16/int8/uint8/bool tensors of any offset and strides. The pickle is read by a small VM
//! that only builds data: nothing is imported or executed, a call to an unknown function
//! (`os.system`, `builtins.eval`...) is kept as an inert [`Value::Object`] and never run.
//! Every size is checked against the input: nesting depth, object counts and expanded bytes
//! are bounded by the file size, and every tensor must lie inside its storage.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ckpt = ctmask::checkpoint::load_torch_file("segmentation_model.pth".as_ref())?;
//! let weights = ctmask::checkpoint::state_dict(&ckpt)?; // [(key, RawTensor)] in file order
//! let anchors = ctmask::checkpoint::anchor_generator(&ckpt); // Some(AnchorSpec { sizes, aspect_ratios })
//! # Ok(()) }
//! ```

mod expand;
pub mod import;
mod pickle;
mod reduce;
mod torch_file;
mod value;

use std::path::{Path, PathBuf};

pub use value::{AnchorSpec, DType, RawTensor, Value, anchor_generator, state_dict};

/// Deepest nesting of containers a checkpoint may have (also stops recursive structures).
pub(crate) const MAX_DEPTH: usize = 100;
/// Most dimensions a tensor may have.
pub(crate) const MAX_DIMS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {}: {reason}", path.display())]
    InFile {
        path: PathBuf,
        reason: Box<CheckpointError>,
    },
    #[error("empty file (0 bytes), not a torch checkpoint")]
    Empty,
    #[error("not a torch checkpoint: {0}")]
    NotCheckpoint(String),
    #[error("invalid zip checkpoint: {0}")]
    Zip(String),
    #[error("invalid legacy checkpoint: {0}")]
    Legacy(String),
    #[error("invalid pickle at byte {offset}: {reason}")]
    Pickle { offset: usize, reason: String },
    #[error("checkpoint refused: {0}")]
    Limit(String),
    #[error("invalid tensor: {0}")]
    Tensor(String),
    #[error("no state dict: {0}")]
    NoStateDict(String),
}

/// Read a `torch.save` file (zip or legacy) into plain data.
pub fn load_torch_file(path: &Path) -> Result<Value, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    })?;
    load_torch_bytes(&bytes).map_err(|e| CheckpointError::InFile {
        path: path.to_owned(),
        reason: Box::new(e),
    })
}

/// Read the bytes of a `torch.save` file (zip or legacy) into plain data.
pub fn load_torch_bytes(bytes: &[u8]) -> Result<Value, CheckpointError> {
    torch_file::load(bytes)
}

/// What expanding a pickle may allocate: shared references (memo GETs) are copied, so allow
/// twice the objects the pickle built and four times the file's bytes, plus slack.
pub(crate) fn budget_for(input_len: usize, pickle_nodes: usize) -> expand::Budget {
    expand::Budget {
        nodes: pickle_nodes.saturating_mul(2).saturating_add(4096),
        bytes: input_len.saturating_mul(4).saturating_add(1 << 20),
    }
}

/// End-to-end tests on the files written by `scripts/make_checkpoint_fixtures.py`.
#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/checkpoint")
            .join(name)
    }

    fn sidecar(name: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(fixture(&format!("{name}.json"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Compare tensors with the sidecar's [key, dtype, shape, hex] records, bit for bit.
    fn assert_tensors(got: &[(String, RawTensor)], expected: &serde_json::Value) {
        let expected = expected.as_array().unwrap();
        assert_eq!(got.len(), expected.len());
        for ((key, t), e) in got.iter().zip(expected) {
            assert_eq!(key, e[0].as_str().unwrap());
            assert_eq!(t.dtype.name(), e[1].as_str().unwrap(), "{key}");
            let shape: Vec<usize> = e[2]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(t.shape, shape, "{key}");
            assert_eq!(t.data, hex(e[3].as_str().unwrap()), "{key}");
        }
    }

    #[test]
    fn state_dicts_match_torch_bit_for_bit_in_both_containers() {
        for name in ["dtypes", "views", "nested"] {
            let expected = sidecar(name);
            for container in ["zip", "legacy"] {
                let v = load_torch_file(&fixture(&format!("{name}_{container}.pth"))).unwrap();
                assert_tensors(&state_dict(&v).unwrap(), &expected["state_dict"]);
            }
        }
    }

    #[test]
    fn nested_checkpoint_exposes_anchors_and_metadata() {
        let expected = sidecar("nested");
        for container in ["zip", "legacy"] {
            let v = load_torch_file(&fixture(&format!("nested_{container}.pth"))).unwrap();
            let AnchorSpec {
                sizes,
                aspect_ratios: ratios,
            } = anchor_generator(&v).unwrap();
            assert_eq!(serde_json::to_value(&sizes).unwrap(), expected["sizes"]);
            assert_eq!(serde_json::to_value(&ratios).unwrap(), expected["aspect_ratios"]);
            assert_eq!(v.get("epoch").and_then(Value::as_str), Some("50"));
            assert_eq!(v.get("model_name").and_then(Value::as_str), Some("x"));
            assert_eq!(v.get("lrate"), Some(&Value::Float(1e-5)));
            let ag = v.get("anchor_generator").unwrap();
            assert!(matches!(ag, Value::Object { class, .. } if class.ends_with(".AnchorGenerator")));
            let cells = ag.get("cell_anchors").and_then(Value::as_seq).unwrap();
            let cells: Vec<_> = cells
                .iter()
                .map(|c| ("0".to_owned(), c.as_tensor().unwrap().clone()))
                .collect();
            assert_tensors(&cells, &expected["cell_anchors"]);
            let opt = v.get("optimizer_state").unwrap();
            let group = &opt.get("param_groups").and_then(Value::as_seq).unwrap()[0];
            assert_eq!(group.get("lr"), Some(&Value::Float(1e-5)));
            assert_eq!(
                group.get("betas"),
                Some(&Value::Tuple(vec![Value::Float(0.9), Value::Float(0.999)]))
            );
        }
    }

    #[test]
    fn big_endian_storages_are_swapped() {
        let v = load_torch_file(&fixture("big_endian_zip.pth")).unwrap();
        let sd = state_dict(&v).unwrap();
        assert_eq!(sd[0].1.shape, [2, 2]);
        assert_eq!(sd[0].1.to_f32_vec().unwrap(), [1.0, 3.0, 2.0, 4.0]);
    }

    fn broken(name: &str) -> String {
        let e = load_torch_file(&fixture(&format!("broken/{name}"))).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(name), "{msg}");
        msg
    }

    #[test]
    fn broken_files_give_their_own_errors() {
        let cases = [
            ("empty.pth", "empty file (0 bytes)"),
            (
                "not_a_checkpoint.pth",
                "neither a zip archive nor a legacy torch pickle",
            ),
            ("truncated_zip.pth", "invalid zip checkpoint"),
            ("wrong_magic.pth", "wrong magic number"),
            (
                "offset_past_end.pth",
                "offset 3 with size [2] and stride [1] reaches past the 4 elements",
            ),
            (
                "huge_size.pth",
                "size [1099511627776, 1099511627776] does not fit in 4 elements",
            ),
            (
                "storage_too_short.pth",
                "declares 1073741824 float32 elements but holds 16 bytes",
            ),
            ("deep_nesting.pth", "nested deeper than 100 levels"),
        ];
        for (name, reason) in cases {
            let msg = broken(name);
            assert!(msg.contains(reason), "{name}: {msg}");
        }
        let missing = load_torch_file(&fixture("broken/no_such_file.pth")).unwrap_err();
        assert!(matches!(missing, CheckpointError::Io { .. }), "{missing}");
    }

    /// A pickle that would run `os.system` in Python loads as inert data here: the call is an
    /// `Object` naming `os.system` with its argument, nothing is executed, and it is no state dict.
    #[test]
    fn os_system_pickle_stays_inert() {
        let marker = Path::new("/tmp/ctmask_pwned");
        let v = load_torch_file(&fixture("broken/os_system.pth")).unwrap();
        let call = v.get("model_weights").unwrap();
        assert_eq!(
            call,
            &Value::Object {
                class: "os.system".into(),
                args: vec![Value::Str("touch /tmp/ctmask_pwned".into())],
                state: None
            }
        );
        assert!(matches!(v.get("x"), Some(Value::Object { class, .. }) if class == "builtins.eval"));
        assert!(!marker.exists());
        let e = state_dict(&v).unwrap_err();
        assert!(e.to_string().contains("'model_weights' holds a object"), "{e}");
    }
}
