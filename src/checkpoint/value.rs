//! The data a checkpoint holds once unpickled: [`Value`] (plain Python data, tensors, inert
//! globals and objects), [`RawTensor`] (contiguous little-endian bytes plus dtype and shape),
//! and the two questions a model loader asks of it: where is the state dict
//! ([`state_dict`]) and what anchors did the pickled `AnchorGenerator` use ([`anchor_generator`]).

use std::collections::HashSet;

use super::CheckpointError;

/// Element type of a tensor storage (`torch.FloatStorage` is [`DType::F32`], and so on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The torch name of the type (`float32`, `int64`...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }

    /// The dtype of a `torch.<Name>Storage` class, `None` for storages this reader does not know.
    pub(crate) fn from_storage_class(module: &str, name: &str) -> Option<DType> {
        if module != "torch" && module != "torch.storage" {
            return None;
        }
        Some(match name {
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" | "UntypedStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }
}

/// A tensor copied out of its storage: `data` is contiguous, row-major and little-endian.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    /// Number of elements (1 for a scalar of shape `[]`).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements converted to f32 (integers and bool by value, f64 rounded).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>, CheckpointError> {
        let size = self.dtype.size();
        let expected = self.numel().checked_mul(size);
        if expected != Some(self.data.len()) {
            return Err(CheckpointError::Tensor(format!(
                "{} tensor of shape {:?} holds {} bytes, expected {:?}",
                self.dtype.name(),
                self.shape,
                self.data.len(),
                expected
            )));
        }
        let chunks = self.data.chunks_exact(size);
        let out = match self.dtype {
            DType::F32 => chunks.map(|c| f32::from_le_bytes(arr(c))).collect(),
            DType::F64 => chunks.map(|c| f64::from_le_bytes(arr(c)) as f32).collect(),
            DType::F16 => chunks.map(|c| f16_to_f32(u16::from_le_bytes(arr(c)))).collect(),
            DType::BF16 => chunks
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes(arr(c))) << 16))
                .collect(),
            DType::I64 => chunks.map(|c| i64::from_le_bytes(arr(c)) as f32).collect(),
            DType::I32 => chunks.map(|c| i32::from_le_bytes(arr(c)) as f32).collect(),
            DType::I16 => chunks.map(|c| f32::from(i16::from_le_bytes(arr(c)))).collect(),
            DType::I8 => chunks.map(|c| f32::from(c[0] as i8)).collect(),
            DType::U8 => chunks.map(|c| f32::from(c[0])).collect(),
            DType::Bool => chunks.map(|c| if c[0] != 0 { 1.0 } else { 0.0 }).collect(),
        };
        Ok(out)
    }
}

/// A fixed-size array from a chunk of exactly that size.
fn arr<const N: usize>(c: &[u8]) -> [u8; N] {
    c.try_into()
        .expect("chunks_exact yields chunks of the element size")
}

/// IEEE half to single precision, exact for every value including subnormals, inf and NaN.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = man * 2^-24, normalise it.
            let shift = man.leading_zeros() - 21; // bring the top set bit to position 10
            let man = (man << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (man << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// Unpickled data. Nothing in it was executed: globals and objects are only names and data.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer outside i64 (little-endian two's complement bytes, as pickle's LONG1 holds it).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    /// A list; sets and frozensets are read as lists too.
    List(Vec<Value>),
    /// A dict or OrderedDict in file order (duplicate keys kept as written).
    Dict(Vec<(Value, Value)>),
    Tensor(RawTensor),
    /// A class or function named by the pickle, never imported.
    Global {
        module: String,
        name: String,
    },
    /// An instance of a class this reader does not build (`module.Name`), with its constructor
    /// arguments and the state given to BUILD (usually its `__dict__`).
    Object {
        class: String,
        args: Vec<Value>,
        state: Option<Box<Value>>,
    },
}

impl Value {
    /// Look up a str key in a dict, or in an object's state dict (an attribute).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(pairs) => pairs
                .iter()
                .rev()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            Value::Object {
                state: Some(state), ..
            } => match state.as_ref() {
                // (dict state, slot state), as pickle's BUILD allows.
                Value::Tuple(parts) => parts.iter().find_map(|p| p.get(key)),
                other => other.get(key),
            },
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An int or bool as i64.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// A float, int or bool as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            other => other.as_i64().map(|i| i as f64),
        }
    }

    /// The items of a tuple or list.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_tensor(&self) -> Option<&RawTensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// A short name of the variant, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Tensor(_) => "tensor",
            Value::Global { .. } => "global",
            Value::Object { .. } => "object",
        }
    }
}

/// Where a state dict may sit in a checkpoint dict, in the order they are tried.
const STATE_DICT_KEYS: [&str; 3] = ["model_weights", "state_dict", "model"];

/// Find the state dict in a loaded checkpoint: the value itself if it is a dict of tensors,
/// else the dict under 'model_weights' / 'state_dict' / 'model'; returns (key, tensor) in file
/// order. Duplicate keys are an error.
pub fn state_dict(v: &Value) -> Result<Vec<(String, RawTensor)>, CheckpointError> {
    let found = if is_tensor_dict(v) {
        Some(("the top level", v))
    } else {
        STATE_DICT_KEYS.iter().find_map(|k| v.get(k).map(|d| (*k, d)))
    };
    let Some((place, Value::Dict(pairs))) = found else {
        return Err(CheckpointError::NoStateDict(match found {
            Some((place, d)) => format!("'{place}' holds a {}, not a dict", d.kind()),
            None => {
                "no dict of tensors at the top level or under 'model_weights', 'state_dict' or 'model'".into()
            }
        }));
    };
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(pairs.len());
    for (k, t) in pairs {
        let (Some(key), Some(tensor)) = (k.as_str(), t.as_tensor()) else {
            return Err(CheckpointError::NoStateDict(format!(
                "'{place}' is not a dict of str to tensor: it maps a {} to a {}",
                k.kind(),
                t.kind()
            )));
        };
        if !seen.insert(key) {
            return Err(CheckpointError::NoStateDict(format!(
                "'{place}' has the key '{key}' twice"
            )));
        }
        out.push((key.to_owned(), tensor.clone()));
    }
    Ok(out)
}

fn is_tensor_dict(v: &Value) -> bool {
    matches!(v, Value::Dict(p) if !p.is_empty()
        && p.iter().all(|(k, t)| k.as_str().is_some() && t.as_tensor().is_some()))
}

/// The `sizes` and `aspect_ratios` of a pickled AnchorGenerator, one list per feature level.
#[derive(Debug, Clone, PartialEq)]
pub struct AnchorSpec {
    pub sizes: Vec<Vec<f64>>,
    pub aspect_ratios: Vec<Vec<f64>>,
}

/// The anchor sizes and aspect ratios of a pickled AnchorGenerator found under
/// 'anchor_generator', if any (its `sizes` / `aspect_ratios` attributes, ints read as floats).
pub fn anchor_generator(v: &Value) -> Option<AnchorSpec> {
    let ag = v.get("anchor_generator")?;
    let nested = |name: &str| -> Option<Vec<Vec<f64>>> {
        ag.get(name)?
            .as_seq()?
            .iter()
            .map(|level| level.as_seq()?.iter().map(Value::as_f64).collect())
            .collect()
    };
    Some(AnchorSpec {
        sizes: nested("sizes")?,
        aspect_ratios: nested("aspect_ratios")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(values: &[f32]) -> Value {
        Value::Tensor(RawTensor {
            dtype: DType::F32,
            shape: vec![values.len()],
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
    }

    fn s(x: &str) -> Value {
        Value::Str(x.into())
    }

    #[test]
    fn f16_conversion_covers_normal_subnormal_and_special_values() {
        let cases: [(u16, f32); 8] = [
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x0001, 5.960_464_5e-8),
            (0x03ff, 6.097_555e-5),
            (0x7bff, 65504.0),
            (0x7c00, f32::INFINITY),
            (0x8000, -0.0),
        ];
        for (h, f) in cases {
            assert_eq!(f16_to_f32(h).to_bits(), f.to_bits(), "{h:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn to_f32_vec_converts_each_dtype() {
        let t = |dtype, data: Vec<u8>| RawTensor {
            dtype,
            shape: vec![2],
            data,
        };
        let i64s = [-3i64, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(t(DType::I64, i64s).to_f32_vec().unwrap(), [-3.0, 7.0]);
        assert_eq!(t(DType::I8, vec![0xff, 2]).to_f32_vec().unwrap(), [-1.0, 2.0]);
        assert_eq!(t(DType::Bool, vec![0, 1]).to_f32_vec().unwrap(), [0.0, 1.0]);
        assert_eq!(
            t(DType::BF16, vec![0x80, 0x3f, 0, 0xc0]).to_f32_vec().unwrap(),
            [1.0, -2.0]
        );
        assert!(t(DType::F32, vec![0; 4]).to_f32_vec().is_err());
    }

    #[test]
    fn state_dict_is_found_at_top_or_under_known_keys() {
        let sd = Value::Dict(vec![(s("a"), tensor(&[1.0])), (s("b"), tensor(&[2.0, 3.0]))]);
        assert_eq!(state_dict(&sd).unwrap().len(), 2);
        let nested = Value::Dict(vec![(s("epoch"), s("50")), (s("model_weights"), sd.clone())]);
        let found = state_dict(&nested).unwrap();
        assert_eq!(found[1].0, "b");
        assert_eq!(found[1].1.to_f32_vec().unwrap(), [2.0, 3.0]);
        let err = state_dict(&Value::Dict(vec![(s("model"), s("x"))])).unwrap_err();
        assert!(err.to_string().contains("'model' holds a str"), "{err}");
        let dup = Value::Dict(vec![(s("a"), tensor(&[1.0])), (s("a"), tensor(&[1.0]))]);
        assert!(state_dict(&dup).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn anchor_generator_reads_object_attributes() {
        let ints = |v: &[i64]| Value::Tuple(v.iter().map(|&i| Value::Int(i)).collect());
        let state = Value::Dict(vec![
            (s("sizes"), Value::Tuple(vec![ints(&[2, 4])])),
            (
                s("aspect_ratios"),
                Value::Tuple(vec![Value::Tuple(vec![Value::Float(0.5), Value::Int(1)])]),
            ),
        ]);
        let ag = Value::Object {
            class: "x.AnchorGenerator".into(),
            args: vec![],
            state: Some(Box::new(state)),
        };
        let ckpt = Value::Dict(vec![(s("anchor_generator"), ag)]);
        assert_eq!(
            anchor_generator(&ckpt),
            Some(AnchorSpec {
                sizes: vec![vec![2.0, 4.0]],
                aspect_ratios: vec![vec![0.5, 1.0]]
            })
        );
        assert_eq!(anchor_generator(&Value::Dict(vec![])), None);
    }
}
