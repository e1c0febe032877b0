//! The two `torch.save` containers. The zip format (torch >= 1.6): `<name>/data.pkl` is the
//! pickle, `<name>/data/<key>` the raw storages, `<name>/byteorder` their byte order. The
//! legacy format (`_use_new_zipfile_serialization=False`, torch 1.1): five consecutive pickles
//! (magic number, protocol 1001, sys info, the object, the storage keys) followed, for each key
//! in order, by an int64 element count and the storage's raw bytes. Storages are borrowed from
//! the input and every tensor is copied out once, checked against its storage.

use std::collections::HashMap;
use std::io::Cursor;

use super::expand::Budget;
use super::pickle::{self, Node, Pickle, StorageRef, TensorRef};
use super::value::{RawTensor, Value};
use super::{CheckpointError, budget_for};

/// `0x1950a86a20f9469cfc6c` as pickle's LONG1 stores it (little-endian).
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL: i64 = 1001;

/// Raw storages by key, borrowed from the input.
struct Storages<'a> {
    by_key: HashMap<String, &'a [u8]>,
    big_endian: bool,
}

pub(crate) fn load(bytes: &[u8]) -> Result<Value, CheckpointError> {
    match bytes {
        [] => Err(CheckpointError::Empty),
        [b'P', b'K', 3, 4, ..] => load_zip(bytes),
        [0x80, ..] => load_legacy(bytes),
        _ => Err(CheckpointError::NotCheckpoint(format!(
            "starts with {:02x?}, neither a zip archive nor a legacy torch pickle",
            &bytes[..bytes.len().min(4)]
        ))),
    }
}

fn zip_err(e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Zip(e.to_string())
}

fn load_zip(bytes: &[u8]) -> Result<Value, CheckpointError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(zip_err)?;
    let mut entries: HashMap<String, &[u8]> = HashMap::new();
    for i in 0..zip.len() {
        let f = zip.by_index_raw(i).map_err(zip_err)?;
        let name = f.name().to_owned();
        if f.compression() != zip::CompressionMethod::Stored || f.compressed_size() != f.size() {
            return Err(CheckpointError::Zip(format!(
                "entry {name} is compressed (torch writes stored entries)"
            )));
        }
        let range = usize::try_from(f.data_start())
            .ok()
            .zip(usize::try_from(f.size()).ok())
            .and_then(|(start, len)| Some(start..start.checked_add(len)?))
            .filter(|r| r.end <= bytes.len())
            .ok_or_else(|| CheckpointError::Zip(format!("entry {name} extends past the end of the file")))?;
        entries.insert(name, &bytes[range]);
    }
    let mut pkl: Vec<&String> = entries
        .keys()
        .filter(|n| n.split('/').collect::<Vec<_>>().as_slice().len() == 2 && n.ends_with("/data.pkl"))
        .collect();
    pkl.sort();
    let name = match pkl.as_slice() {
        [one] => (*one).clone(),
        [] => return Err(CheckpointError::Zip("no <name>/data.pkl record".into())),
        many => {
            return Err(CheckpointError::Zip(format!(
                "several data.pkl records: {many:?}"
            )));
        }
    };
    let prefix = name.trim_end_matches("data.pkl").to_owned(); // "<name>/"
    let big_endian = match entries.get(&format!("{prefix}byteorder")).copied() {
        None | Some(b"little") => false,
        Some(b"big") => true,
        Some(other) => {
            return Err(CheckpointError::Zip(format!(
                "unknown byteorder record {:?}",
                String::from_utf8_lossy(other)
            )));
        }
    };
    let storage_prefix = format!("{prefix}data/");
    let by_key = entries
        .iter()
        .filter_map(|(n, d)| Some((n.strip_prefix(&storage_prefix)?.to_owned(), *d)))
        .collect();
    let pickle = pickle::parse(entries[&name], 0)?;
    expand(&pickle, &Storages { by_key, big_endian }, bytes.len())
}

fn load_legacy(bytes: &[u8]) -> Result<Value, CheckpointError> {
    let legacy = |m: String| CheckpointError::Legacy(m);
    let magic = pickle::parse(bytes, 0)?;
    match &magic.nodes[magic.root] {
        Node::BigInt(b) if b.as_slice() == LEGACY_MAGIC => {}
        _ => {
            return Err(legacy(
                "wrong magic number (not a torch.save file, or corrupt)".into(),
            ));
        }
    }
    let protocol = pickle::parse(bytes, magic.end)?;
    match protocol.nodes[protocol.root] {
        Node::Int(LEGACY_PROTOCOL) => {}
        _ => {
            return Err(legacy("unsupported protocol version (expected 1001)".into()));
        }
    }
    let sys_info = pickle::parse(bytes, protocol.end)?;
    let big_endian = match &sys_info.nodes[sys_info.root] {
        Node::Dict(pairs) => pairs.iter().any(|&(k, v)| {
            matches!(&sys_info.nodes[k], Node::Str(s) if s == "little_endian")
                && matches!(sys_info.nodes[v], Node::Bool(false))
        }),
        _ => return Err(legacy("system info is not a dict".into())),
    };
    let object = pickle::parse(bytes, sys_info.end)?;
    let keys = pickle::parse(bytes, object.end)?;
    let Node::List(key_ids) = &keys.nodes[keys.root] else {
        return Err(legacy("storage key list is not a list".into()));
    };
    // The element size of each storage is only named by the object pickle.
    let mut declared: HashMap<&str, &StorageRef> = HashMap::new();
    for node in &object.nodes {
        let s = match node {
            Node::Storage(s) => &**s,
            Node::Tensor(t) => &t.storage,
            _ => continue,
        };
        if declared
            .insert(&s.key, s)
            .is_some_and(|old| old.dtype != s.dtype || old.numel != s.numel)
        {
            return Err(legacy(format!(
                "storage '{}' declared with two types or sizes",
                s.key
            )));
        }
    }
    let mut by_key = HashMap::new();
    let mut pos = keys.end;
    for &id in key_ids {
        let Node::Str(key) = &keys.nodes[id] else {
            return Err(legacy("storage key is not a str".into()));
        };
        let s = declared
            .get(key.as_str())
            .ok_or_else(|| legacy(format!("storage '{key}' is not used by the object")))?;
        let truncated = || {
            legacy(format!(
                "storage '{key}' truncated at byte {pos} of {}",
                bytes.len()
            ))
        };
        let count_bytes = bytes.get(pos..pos + 8).ok_or_else(truncated)?;
        let count = u64::from_le_bytes(count_bytes.try_into().expect("slice of 8 bytes"));
        if count != s.numel {
            return Err(legacy(format!(
                "storage '{key}' holds {count} elements, the object expects {}",
                s.numel
            )));
        }
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(s.dtype.size()));
        let data = len
            .and_then(|len| bytes.get(pos + 8..(pos + 8).checked_add(len)?))
            .ok_or_else(truncated)?;
        pos += 8 + data.len();
        if by_key.insert(key.clone(), data).is_some() {
            return Err(legacy(format!("storage '{key}' listed twice")));
        }
    }
    expand(&object, &Storages { by_key, big_endian }, bytes.len())
}

fn expand(pickle: &Pickle, storages: &Storages, input_len: usize) -> Result<Value, CheckpointError> {
    let mut budget = budget_for(input_len, pickle.nodes.len());
    pickle.to_value(&mut |t, budget| materialize(t, storages, budget), &mut budget)
}

/// The elements of `storage` a tensor may address, after a legacy view is applied.
fn storage_bytes<'a>(s: &StorageRef, storages: &Storages<'a>) -> Result<&'a [u8], CheckpointError> {
    let bad = |m: String| CheckpointError::Tensor(format!("storage '{}': {m}", s.key));
    let data = *storages
        .by_key
        .get(&s.key)
        .ok_or_else(|| bad("not in the file".into()))?;
    let es = s.dtype.size() as u64;
    let need = s
        .numel
        .checked_mul(es)
        .filter(|&n| n <= data.len() as u64)
        .ok_or_else(|| {
            bad(format!(
                "declares {} {} elements but holds {} bytes",
                s.numel,
                s.dtype.name(),
                data.len()
            ))
        })?;
    let (start, len) = match s.view {
        None => (0, need),
        Some((off, n)) => (off.saturating_mul(es), n.saturating_mul(es)),
    };
    start
        .checked_add(len)
        .filter(|&end| end <= need)
        .map(|end| &data[start as usize..end as usize])
        .ok_or_else(|| bad("view past the end of its storage".into()))
}

/// Copy a (possibly strided) tensor out of its storage as contiguous little-endian bytes.
fn materialize(
    t: &TensorRef,
    storages: &Storages,
    budget: &mut Budget,
) -> Result<RawTensor, CheckpointError> {
    let data = storage_bytes(&t.storage, storages)?;
    let dtype = t.storage.dtype;
    let es = dtype.size();
    let elements = (data.len() / es) as u64;
    let bad = |m: String| CheckpointError::Tensor(format!("tensor on storage '{}': {m}", t.storage.key));
    let numel = t
        .size
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= elements);
    let Some(numel) = numel else {
        return Err(bad(format!(
            "size {:?} does not fit in {elements} elements",
            t.size
        )));
    };
    if numel > 0 {
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |acc, (&n, &s)| acc.checked_add((n - 1).checked_mul(s)?));
        if last.is_none_or(|l| l >= elements) {
            return Err(bad(format!(
                "offset {} with size {:?} and stride {:?} reaches past the {elements} elements",
                t.offset, t.size, t.stride
            )));
        }
    }
    let nbytes = numel as usize * es;
    budget.take_bytes(nbytes)?;
    let mut out = Vec::with_capacity(nbytes);
    if numel > 0 {
        let shape: Vec<usize> = t.size.iter().map(|&d| d as usize).collect();
        let stride: Vec<usize> = t.stride.iter().map(|&d| d as usize).collect();
        copy_strided(data, es, t.offset as usize, &shape, &stride, &mut out);
    }
    if storages.big_endian {
        out.chunks_exact_mut(es).for_each(<[u8]>::reverse);
    }
    Ok(RawTensor {
        dtype,
        shape: t.size.iter().map(|&d| d as usize).collect(),
        data: out,
    })
}

/// Row-major walk over `shape`; every index was checked to lie inside `data`.
fn copy_strided(data: &[u8], es: usize, offset: usize, shape: &[usize], stride: &[usize], out: &mut Vec<u8>) {
    // Trailing dimensions that are contiguous copy as one run.
    let mut run = 1;
    let mut outer = shape.len();
    while outer > 0 && (shape[outer - 1] == 1 || stride[outer - 1] == run) {
        run *= shape[outer - 1];
        outer -= 1;
    }
    let run_bytes = run * es;
    let mut index = vec![0usize; outer];
    loop {
        let start = offset + index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&data[start * es..start * es + run_bytes]);
        // Odometer increment over the outer dimensions.
        let mut d = outer;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::value::DType;
    use super::*;

    fn storages(data: &[u8]) -> Storages<'_> {
        Storages {
            by_key: HashMap::from([("0".to_owned(), data)]),
            big_endian: false,
        }
    }

    fn tref(numel: u64, offset: u64, size: &[u64], stride: &[u64]) -> TensorRef {
        let storage = StorageRef {
            dtype: DType::U8,
            key: "0".into(),
            numel,
            view: None,
        };
        TensorRef {
            storage,
            offset,
            size: size.to_vec(),
            stride: stride.to_vec(),
        }
    }

    #[test]
    fn strided_views_are_copied_row_major() {
        let data: Vec<u8> = (0..12).collect();
        let s = storages(&data);
        let mut b = Budget {
            nodes: 10,
            bytes: 100,
        };
        // Transpose of a 3x4 matrix.
        let t = materialize(&tref(12, 0, &[4, 3], &[1, 4]), &s, &mut b).unwrap();
        assert_eq!(t.data, [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
        // Column slice with offset, then a scalar.
        let t = materialize(&tref(12, 2, &[3, 2], &[4, 1]), &s, &mut b).unwrap();
        assert_eq!(t.data, [2, 3, 6, 7, 10, 11]);
        let t = materialize(&tref(12, 11, &[], &[]), &s, &mut b).unwrap();
        assert_eq!((t.shape.len(), t.data), (0, vec![11]));
    }

    #[test]
    fn out_of_range_tensors_are_refused() {
        let data = [0u8; 6];
        let s = storages(&data);
        let mut b = Budget {
            nodes: 10,
            bytes: 100,
        };
        let e = materialize(&tref(6, 5, &[2], &[1]), &s, &mut b).unwrap_err();
        assert!(e.to_string().contains("reaches past"), "{e}");
        let e = materialize(&tref(6, 0, &[7], &[1]), &s, &mut b).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        let e = materialize(&tref(7, 0, &[1], &[1]), &s, &mut b).unwrap_err();
        assert!(e.to_string().contains("holds 6 bytes"), "{e}");
        let e = materialize(&tref(6, 0, &[u64::MAX, 2], &[1, 1]), &s, &mut b).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }
}
