//! The ctmask model file: safetensors whose tensors are named by the original checkpoint keys and
//! whose metadata describes the model (`format`, `ctmask_version`, `config`: the [`ModelConfig`]
//! as JSON, optional `provenance`). Loading is strict: missing, unexpected and mis-shaped tensors
//! are named in the error. Python reads these files with `safetensors.torch.load_file`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{Kind, Tensor};

use super::config::ModelConfig;
use crate::{Error, Result};

/// Value of the `format` metadata key.
pub const FORMAT: &str = "ctmask-model/1";

/// Read the config stored in a model file without loading the tensors' values.
pub fn read_config(path: &Path) -> Result<(ModelConfig, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    read_config_bytes(path, &bytes)
}

/// The config and metadata of a model file already read into memory.
pub fn read_config_bytes(path: &Path, bytes: &[u8]) -> Result<(ModelConfig, BTreeMap<String, String>)> {
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::model_file(path, format!("not a safetensors model file: {e}")))?;
    let meta: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    match meta.get("format") {
        Some(f) if f == FORMAT => {}
        Some(f) => {
            return Err(Error::model_file(
                path,
                format!("unsupported model format {f:?} (expected {FORMAT:?})"),
            ));
        }
        None => {
            return Err(Error::model_file(
                path,
                "not a ctmask model file: no 'format' metadata (import .pth files with `ctmask import-weights`)",
            ));
        }
    }
    let cfg_json = meta
        .get("config")
        .ok_or_else(|| Error::model_file(path, "no 'config' metadata"))?;
    let cfg: ModelConfig = serde_json::from_str(cfg_json)
        .map_err(|e| Error::model_file(path, format!("bad 'config' metadata: {e}")))?;
    cfg.validate()
        .map_err(|e| Error::model_file(path, format!("invalid config: {e}")))?;
    Ok((cfg, meta))
}

fn kind_of(d: Dtype) -> Option<Kind> {
    Some(match d {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        _ => return None,
    })
}

fn dtype_of(k: Kind) -> Option<Dtype> {
    Some(match k {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        _ => return None,
    })
}

/// A tensor view for the safetensors serializer.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn raw_of(t: &Tensor) -> Result<Raw> {
    let t = t.detach().to_device(tch::Device::Cpu).contiguous();
    let dtype =
        dtype_of(t.kind()).ok_or_else(|| Error::Other(format!("cannot store tensor kind {:?}", t.kind())))?;
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(Raw {
        dtype,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        data,
    })
}

/// Write named tensors and metadata (format and config added) to a safetensors file, atomically.
pub fn save(
    path: &Path,
    tensors: &[(String, Tensor)],
    cfg: &ModelConfig,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    let raws: Vec<(String, Raw)> = tensors
        .iter()
        .map(|(n, t)| raw_of(t).map(|r| (n.clone(), r)))
        .collect::<Result<_>>()?;
    let mut meta: HashMap<String, String> = extra.clone().into_iter().collect();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("ctmask_version".into(), env!("CARGO_PKG_VERSION").into());
    meta.insert(
        "config".into(),
        serde_json::to_string(cfg).map_err(|e| Error::Other(e.to_string()))?,
    );
    let bytes = safetensors::tensor::serialize(raws.iter().map(|(n, r)| (n.as_str(), r)), &Some(meta))
        .map_err(|e| Error::model_file(path, format!("cannot serialise: {e}")))?;
    Ok(crate::fsutil::write_atomic(path, &bytes)?)
}

/// Copy every tensor of `file` into the matching variable, strictly.
pub fn load_into(path: &Path, bytes: &[u8], vars: &HashMap<String, Tensor>) -> Result<()> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::model_file(path, format!("not a safetensors file: {e}")))?;
    let names: std::collections::BTreeSet<String> = st.names().into_iter().cloned().collect();
    let mut missing: Vec<&String> = vars.keys().filter(|k| !names.contains(*k)).collect();
    let mut unexpected: Vec<&String> = names.iter().filter(|k| !vars.contains_key(*k)).collect();
    missing.sort();
    unexpected.sort();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(Error::model_file(
            path,
            format!("tensors do not match the model: missing {missing:?}, unexpected {unexpected:?}"),
        ));
    }
    let mut sorted: Vec<(&String, &Tensor)> = vars.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut views = Vec::with_capacity(sorted.len());
    let mut mismatched = Vec::new();
    for (name, var) in sorted {
        let view = st
            .tensor(name)
            .map_err(|e| Error::model_file(path, format!("{name}: {e}")))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if shape != var.size() {
            mismatched.push(format!(
                "{name}: shape {shape:?} in the file, the model expects {:?}",
                var.size()
            ));
        }
        views.push((name, view, var));
    }
    if !mismatched.is_empty() {
        return Err(Error::model_file(
            path,
            format!("mis-shaped tensors: {}", mismatched.join("; ")),
        ));
    }
    for (name, view, var) in views {
        copy_view(path, name, &view, var)?;
    }
    Ok(())
}

fn copy_view(path: &Path, name: &str, view: &TensorView<'_>, var: &Tensor) -> Result<()> {
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    let kind = kind_of(view.dtype())
        .ok_or_else(|| Error::model_file(path, format!("{name}: unsupported dtype {:?}", view.dtype())))?;
    let src = Tensor::f_from_data_size(view.data(), &shape, kind)?;
    let mut var = var.shallow_clone();
    tch::no_grad(|| var.f_copy_(&src.to_kind(var.kind()).to_device(var.device())))?;
    Ok(())
}
