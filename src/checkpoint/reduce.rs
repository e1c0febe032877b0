//! What the pickle VM's calls build. REDUCE / NEWOBJ on a known callable gives data
//! (`OrderedDict` and `dict` give a dict, `set` / `frozenset` a list, `torch.Size` a tuple,
//! `_codecs.encode` bytes, `torch._utils._rebuild_tensor_v2` a tensor reference,
//! `_rebuild_parameter` its tensor); a call to anything else becomes an inert `Object` naming
//! the callable, so `os.system` or `builtins.eval` are recorded, never run. Persistent ids give
//! storage references (`('storage', torch.FloatStorage, key, location, numel[, view])`) and, in
//! legacy files, the class of a pickled module (`('module', cls, source file, source)`).

use super::MAX_DIMS;
use super::pickle::{Id, Node, StorageRef, TensorRef};
use super::value::DType;

/// A call's result: a node already in the arena, or a new one to add.
pub(crate) enum Built {
    Existing(Id),
    New(Node),
}

/// How many `_rebuild_from_type_v2` wrappers may nest.
const MAX_WRAPPERS: usize = 4;

/// REDUCE / NEWOBJ of `func` on `args`. Errors are reasons; the VM adds the offset.
pub(crate) fn call(nodes: &[Node], func: Id, args: Vec<Id>, depth: usize) -> Result<Built, String> {
    let Node::Global { module, name } = &nodes[func] else {
        return Err("call of something that is not a global".into());
    };
    let arg = |i: usize| args.get(i).map(|&id| &nodes[id]);
    let node = match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") | ("builtins", "dict") => dict(nodes, arg(0))?,
        ("collections", "defaultdict") => Node::Dict(Vec::new()),
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => tensor(nodes, &args)?,
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            return match args.first() {
                Some(&data) if matches!(nodes[data], Node::Tensor(_)) => Ok(Built::Existing(data)),
                _ => Err("parameter data is not a tensor".into()),
            };
        }
        ("torch._tensor", "_rebuild_from_type_v2") if depth < MAX_WRAPPERS => {
            let (Some(&inner), Some(Node::Tuple(inner_args))) = (args.first(), arg(2)) else {
                return Err("bad _rebuild_from_type_v2 arguments".into());
            };
            return call(nodes, inner, inner_args.clone(), depth + 1);
        }
        ("torch", "Size") => Node::Tuple(items(arg(0)).ok_or("bad torch.Size argument")?),
        ("builtins", "set" | "frozenset") => Node::List(items(arg(0)).ok_or("bad set argument")?),
        ("_codecs", "encode") => encode(arg(0), arg(1))?,
        ("builtins", "bytes" | "bytearray") if args.is_empty() => Node::Bytes(Vec::new()),
        ("copyreg", "_reconstructor" | "__newobj__") => match arg(0) {
            Some(Node::Global { module: m, name: n }) => Node::Object {
                class: format!("{m}.{n}"),
                args: if name == "__newobj__" {
                    args[1..].to_vec()
                } else {
                    Vec::new()
                },
                state: None,
            },
            _ => return Err("copyreg call without a class".into()),
        },
        _ => Node::Object {
            class: format!("{module}.{name}"),
            args,
            state: None,
        },
    };
    Ok(Built::New(node))
}

/// The items of a tuple or list argument (none for a missing one).
fn items(n: Option<&Node>) -> Option<Vec<Id>> {
    match n {
        Some(Node::Tuple(v) | Node::List(v)) => Some(v.clone()),
        None => Some(Vec::new()),
        _ => None,
    }
}

/// `OrderedDict()`, `OrderedDict(dict)` or `OrderedDict([(k, v), ...])`.
fn dict(nodes: &[Node], init: Option<&Node>) -> Result<Node, String> {
    let pairs = match init {
        None => Vec::new(),
        Some(Node::Dict(p)) => p.clone(),
        Some(Node::List(v) | Node::Tuple(v)) => v
            .iter()
            .map(|&pair| match &nodes[pair] {
                Node::Tuple(kv) if kv.len() == 2 => Ok((kv[0], kv[1])),
                _ => Err("dict items are not pairs".to_owned()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("unsupported dict constructor argument".into()),
    };
    Ok(Node::Dict(pairs))
}

/// `_codecs.encode(text, 'latin1')`, how protocol 2 writes Python 3 bytes.
fn encode(text: Option<&Node>, encoding: Option<&Node>) -> Result<Node, String> {
    let (Some(Node::Str(s)), Some(Node::Str(enc))) = (text, encoding) else {
        return Err("unsupported _codecs.encode arguments".into());
    };
    match enc.as_str() {
        "latin1" | "latin-1" => s
            .chars()
            .map(|c| u8::try_from(u32::from(c)).ok())
            .collect::<Option<Vec<u8>>>()
            .map(Node::Bytes)
            .ok_or_else(|| "non latin-1 text in encoded bytes".into()),
        "utf-8" | "utf8" => Ok(Node::Bytes(s.as_bytes().to_vec())),
        other => Err(format!("unsupported encoding {other:?} in _codecs.encode")),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`: checked to be
/// non-negative ints here, against the storage when the data is read.
fn tensor(nodes: &[Node], args: &[Id]) -> Result<Node, String> {
    let arg = |i: usize| args.get(i).map(|&id| &nodes[id]);
    let Some(Node::Storage(storage)) = arg(0) else {
        return Err("tensor storage is not a storage persistent id".into());
    };
    let offset = match arg(1) {
        Some(Node::Int(o)) if *o >= 0 => *o as u64,
        _ => return Err("tensor storage offset is not a non-negative int".into()),
    };
    let dims = |n: Option<&Node>, what: &str| -> Result<Vec<u64>, String> {
        let Some(Node::Tuple(v) | Node::List(v)) = n else {
            return Err(format!("tensor {what} is not a tuple"));
        };
        if v.len() > MAX_DIMS {
            return Err(format!("tensor has {} dimensions, more than {MAX_DIMS}", v.len()));
        }
        v.iter()
            .map(|&id| match nodes[id] {
                Node::Int(i) if i >= 0 => Ok(i as u64),
                _ => Err(format!("tensor {what} holds something not a non-negative int")),
            })
            .collect()
    };
    let size = dims(arg(2), "size")?;
    let stride = dims(arg(3), "stride")?;
    if size.len() != stride.len() {
        return Err("tensor size and stride differ in length".into());
    }
    Ok(Node::Tensor(Box::new(TensorRef {
        storage: (**storage).clone(),
        offset,
        size,
        stride,
    })))
}

/// BINPERSID: `('storage', torch.XStorage, key, location, numel[, view])` or
/// `('module', cls, ...)`.
pub(crate) fn persistent_load(nodes: &[Node], pid: Id) -> Result<Node, String> {
    let Node::Tuple(parts) = &nodes[pid] else {
        return Err("persistent id is not a tuple".into());
    };
    let part = |i: usize| parts.get(i).map(|&id| &nodes[id]);
    let (Some(Node::Str(kind)), Some(Node::Global { module, name })) = (part(0), part(1)) else {
        return Err("unsupported persistent id".into());
    };
    match kind.as_str() {
        "module" => Ok(Node::Global {
            module: module.clone(),
            name: name.clone(),
        }),
        "storage" => {
            let dtype = DType::from_storage_class(module, name)
                .ok_or_else(|| format!("unsupported storage type {module}.{name}"))?;
            let (Some(Node::Str(key)), Some(&Node::Int(numel))) = (part(2), part(4)) else {
                return Err("storage persistent id needs a str key and an int size".into());
            };
            let numel = u64::try_from(numel).map_err(|_| "negative storage size".to_owned())?;
            let view = match part(5) {
                None | Some(Node::None) => None,
                Some(Node::Tuple(v)) if v.len() == 3 => match (&nodes[v[1]], &nodes[v[2]]) {
                    (&Node::Int(o), &Node::Int(n)) if o >= 0 && n >= 0 => Some((o as u64, n as u64)),
                    _ => return Err("bad storage view".into()),
                },
                Some(_) => return Err("bad storage view".into()),
            };
            Ok(Node::Storage(Box::new(StorageRef {
                dtype,
                key: key.clone(),
                numel,
                view,
            })))
        }
        other => Err(format!("unsupported persistent id kind {other:?}")),
    }
}
