//! A pickle virtual machine that only builds data. It reads the opcodes `torch.save` writes
//! (protocols 2 to 5) into an arena of [`Node`]s and never imports or calls anything: GLOBAL
//! and STACK_GLOBAL yield names, REDUCE / NEWOBJ / BUILD turn a few known classes into data
//! (`OrderedDict`, `set`, `torch.Size`, `_rebuild_tensor_v2`, `_rebuild_parameter`...) and
//! every other call, `os.system` or `builtins.eval` included, into an inert `Object`.
//!
//! Memo GET shares nodes (ids), so the VM does O(1) work per opcode and at most one node per
//! input byte; shared and cyclic references are expanded only by [`Pickle::to_value`], under a
//! depth limit and a node/byte budget. Persistent ids `('storage', torch.XStorage, key,
//! location, numel[, view])` become [`StorageRef`]s that `torch_file` resolves.

use std::collections::HashMap;

use super::value::{DType, RawTensor, Value};
use super::{CheckpointError, MAX_DEPTH, MAX_DIMS};

/// Index of a node in [`Pickle::nodes`].
pub(crate) type Id = usize;

/// A reference to a tensor storage (a persistent id).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    pub dtype: DType,
    pub key: String,
    /// Elements in the stored storage.
    pub numel: u64,
    /// Legacy storage view: (offset, elements) into the stored storage.
    pub view: Option<(u64, u64)>,
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, ...)` before its data is read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

#[derive(Debug, Clone)]
pub(crate) enum Node {
    None,
    Bool(bool),
    Int(i64),
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global { module: String, name: String },
    Object { class: String, args: Vec<Id>, state: Option<Id> },
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// One parsed pickle: the arena, the result and the offset just past its STOP.
pub(crate) struct Pickle {
    pub nodes: Vec<Node>,
    pub root: Id,
    pub end: usize,
}

/// Parse the pickle starting at `data[start]`. Offsets in errors are relative to `data`.
pub(crate) fn parse(data: &[u8], start: usize) -> Result<Pickle, CheckpointError> {
    let mut vm = Vm {
        data,
        pos: start,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        max_nodes: data.len().saturating_sub(start) + 16,
    };
    let root = vm.run()?;
    Ok(Pickle { nodes: vm.nodes, root, end: vm.pos })
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    max_nodes: usize,
}

impl<'a> Vm<'a> {
    fn err(&self, reason: impl Into<String>) -> CheckpointError {
        CheckpointError::Pickle { offset: self.pos, reason: reason.into() }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], CheckpointError> {
        let avail = self.data.len() - self.pos;
        match usize::try_from(n) {
            Ok(n) if n <= avail => {
                let s = &self.data[self.pos..self.pos + n];
                self.pos += n;
                Ok(s)
            }
            _ => Err(self.err(format!("needs {n} bytes, only {avail} left (truncated pickle)"))),
        }
    }

    fn uint(&mut self, n: u64) -> Result<u64, CheckpointError> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    fn line(&mut self) -> Result<&'a str, CheckpointError> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.err("unterminated line"))?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| self.err("line is not utf-8"))
    }

    fn alloc(&mut self, node: Node) -> Result<Id, CheckpointError> {
        if self.nodes.len() >= self.max_nodes {
            return Err(CheckpointError::Limit(format!("pickle builds more than {} objects", self.max_nodes)));
        }
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    fn push(&mut self, node: Node) -> Result<(), CheckpointError> {
        let id = self.alloc(node)?;
        self.stack.push(id);
        Ok(())
    }

    fn pop(&mut self) -> Result<Id, CheckpointError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> Result<Id, CheckpointError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.last() {
            Some(&id) if self.stack.len() > floor => Ok(id),
            _ => Err(self.err("stack underflow")),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>, CheckpointError> {
        let m = self.marks.pop().ok_or_else(|| self.err("no mark on the stack"))?;
        Ok(self.stack.split_off(m))
    }

    fn str_node(&mut self, bytes: &[u8]) -> Result<(), CheckpointError> {
        let s = std::str::from_utf8(bytes).map_err(|_| self.err("string is not utf-8"))?;
        self.push(Node::Str(s.to_owned()))
    }

    fn memo_put(&mut self, key: u64) -> Result<(), CheckpointError> {
        let top = self.top()?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<(), CheckpointError> {
        let id = *self.memo.get(&key).ok_or_else(|| self.err(format!("memo key {key} not set")))?;
        self.stack.push(id);
        Ok(())
    }

    fn int_node(&mut self, bytes: &[u8]) -> Result<(), CheckpointError> {
        let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
        let fill = if negative { 0xff } else { 0 };
        let significant = bytes.iter().rposition(|&b| b != fill).map_or(0, |p| p + 1);
        // Fits in i64 when the bytes beyond the 8th are sign fill and the sign bit agrees.
        if significant <= 8 {
            let mut buf = [fill; 8];
            buf[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
            let v = i64::from_le_bytes(buf);
            if (v < 0) == negative {
                return self.push(Node::Int(v));
            }
        }
        self.push(Node::BigInt(bytes.to_vec()))
    }

    fn run(&mut self) -> Result<Id, CheckpointError> {
        loop {
            let op = *self.take(1)?.first().expect("take(1) returns one byte");
            match op {
                b'.' => {
                    let id = self.pop()?;
                    return Ok(id);
                }
                0x80 => {
                    let proto = self.uint(1)?;
                    if proto > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a size hint only
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    if self.stack.len() > self.marks.last().copied().unwrap_or(0) {
                        self.pop()?;
                    } else {
                        self.pop_mark()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?;
                    self.stack.push(top);
                }
                b'N' => self.push(Node::None)?,
                0x88 => self.push(Node::Bool(true))?,
                0x89 => self.push(Node::Bool(false))?,
                b'J' => {
                    let v = self.uint(4)? as u32 as i32;
                    self.push(Node::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.uint(1)?;
                    self.push(Node::Int(v as i64))?;
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.push(Node::Int(v as i64))?;
                }
                b'I' | b'L' => {
                    let line = self.line()?;
                    let node = match line {
                        "01" if op == b'I' => Node::Bool(true),
                        "00" if op == b'I' => Node::Bool(false),
                        _ => Node::Int(
                            line.trim_end_matches('L')
                                .parse()
                                .map_err(|_| self.err(format!("bad int literal {line:?}")))?,
                        ),
                    };
                    self.push(node)?;
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.uint(1)? } else { self.uint(4)? };
                    let bytes = self.take(n)?;
                    self.int_node(bytes)?;
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().expect("took 8 bytes"));
                    self.push(Node::Float(v))?;
                }
                b'F' => {
                    let line = self.line()?;
                    let v = line.parse().map_err(|_| self.err(format!("bad float literal {line:?}")))?;
                    self.push(Node::Float(v))?;
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.uint(4)?,
                        0x8c => self.uint(1)?,
                        _ => self.uint(8)?,
                    };
                    let b = self.take(n)?;
                    self.str_node(b)?;
                }
                b'T' | b'U' => {
                    // Python 2 str: text when it is utf-8, else bytes.
                    let n = if op == b'T' { self.uint(4)? } else { self.uint(1)? };
                    let b = self.take(n)?;
                    match std::str::from_utf8(b) {
                        Ok(s) => self.push(Node::Str(s.to_owned()))?,
                        Err(_) => self.push(Node::Bytes(b.to_vec()))?,
                    }
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.uint(4)?,
                        b'C' => self.uint(1)?,
                        _ => self.uint(8)?,
                    };
                    let b = self.take(n)?;
                    self.push(Node::Bytes(b.to_vec()))?;
                }
                b')' => self.push(Node::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Node::Tuple(items))?;
                }
                b']' => self.push(Node::List(Vec::new()))?,
                0x8f => self.push(Node::List(Vec::new()))?, // EMPTY_SET, read as a list
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items))?;
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend(vec![item])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.extend(items)?;
                }
                b'}' => self.push(Node::Dict(Vec::new()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push(Node::Dict(pairs))?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.set_items(pairs)?;
                }
                b'q' => {
                    let k = self.uint(1)?;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.uint(4)?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'p' => {
                    let line = self.line()?;
                    let k = line.parse().map_err(|_| self.err(format!("bad memo key {line:?}")))?;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.uint(1)?;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.uint(4)?;
                    self.memo_get(k)?;
                }
                b'g' => {
                    let line = self.line()?;
                    let k = line.parse().map_err(|_| self.err(format!("bad memo key {line:?}")))?;
                    self.memo_get(k)?;
                }
                b'c' => {
                    let module = self.line()?.to_owned();
                    let name = self.line()?.to_owned();
                    self.push(global(module, name))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Node::Str(m), Node::Str(n)) = (&self.nodes[module], &self.nodes[name]) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let g = global(m.clone(), n.clone());
                    self.push(g)?;
                }
                b'R' | 0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop()?; // NEWOBJ_EX keyword arguments: not kept
                    }
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let Node::Tuple(args) = self.nodes[args].clone() else {
                        return Err(self.err("call arguments are not a tuple"));
                    };
                    let id = self.call(func, args, 0)?;
                    self.stack.push(id);
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    // Objects keep their state; BUILD on data (an OrderedDict's `_metadata`,
                    // a tensor's hooks) is ignored.
                    if let Node::Object { state: s, .. } = &mut self.nodes[target] {
                        *s = Some(state);
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let node = self.persistent_load(pid)?;
                    self.push(node)?;
                }
                _ => return Err(self.err(format!("unsupported pickle opcode {op:#04x}"))),
            }
        }
    }

    fn pairs(&self, items: Vec<Id>) -> Result<Vec<(Id, Id)>, CheckpointError> {
        if items.len() % 2 != 0 {
            return Err(self.err("odd number of items for a dict"));
        }
        Ok(items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
    }

    fn extend(&mut self, items: Vec<Id>) -> Result<(), CheckpointError> {
        let target = self.top()?;
        match &mut self.nodes[target] {
            Node::List(v) => {
                v.extend(items);
                Ok(())
            }
            _ => Err(self.err("append to something that is not a list")),
        }
    }

    fn set_items(&mut self, pairs: Vec<(Id, Id)>) -> Result<(), CheckpointError> {
        let target = self.top()?;
        match &mut self.nodes[target] {
            Node::Dict(v) => {
                v.extend(pairs);
                Ok(())
            }
            _ => Err(self.err("set item on something that is not a dict")),
        }
    }

    /// `('storage', torch.XStorage, key, location, numel[, view])` or `('module', cls, ...)`.
    fn persistent_load(&self, pid: Id) -> Result<Node, CheckpointError> {
        let Node::Tuple(parts) = &self.nodes[pid] else {
            return Err(self.err("persistent id is not a tuple"));
        };
        let part = |i: usize| parts.get(i).map(|&id| &self.nodes[id]);
        match (part(0), part(1)) {
            (Some(Node::Str(kind)), Some(Node::Global { module, name })) if kind == "module" => {
                Ok(Node::Global { module: module.clone(), name: name.clone() })
            }
            (Some(Node::Str(kind)), Some(Node::Global { module, name })) if kind == "storage" => {
                let dtype = DType::from_storage_class(module, name)
                    .ok_or_else(|| self.err(format!("unsupported storage type {module}.{name}")))?;
                let (Some(Node::Str(key)), Some(Node::Int(numel))) = (part(2), part(4)) else {
                    return Err(self.err("storage persistent id needs a str key and an int size"));
                };
                let numel = u64::try_from(*numel).map_err(|_| self.err("negative storage size"))?;
                let view = match part(5) {
                    None | Some(Node::None) => None,
                    Some(Node::Tuple(v)) if v.len() == 3 => {
                        match (&self.nodes[v[1]], &self.nodes[v[2]]) {
                            (Node::Int(o), Node::Int(n)) if *o >= 0 && *n >= 0 => Some((*o as u64, *n as u64)),
                            _ => return Err(self.err("bad storage view")),
                        }
                    }
                    Some(_) => return Err(self.err("bad storage view")),
                };
                Ok(Node::Storage(StorageRef { dtype, key: key.clone(), numel, view }))
            }
            _ => Err(self.err("unsupported persistent id")),
        }
    }

    /// REDUCE / NEWOBJ: build data for known callables, an inert object for the rest.
    fn call(&mut self, func: Id, args: Vec<Id>, depth: usize) -> Result<Id, CheckpointError> {
        let Node::Global { module, name } = &self.nodes[func] else {
            return Err(self.err("call of something that is not a global"));
        };
        let arg = |i: usize| args.get(i).map(|&id| &self.nodes[id]);
        let items = |n: Option<&Node>| match n {
            Some(Node::Tuple(v) | Node::List(v)) => Some(v.clone()),
            None => Some(Vec::new()),
            _ => None,
        };
        let node = match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") | ("builtins", "dict") | ("collections", "defaultdict") => {
                let mut pairs = Vec::new();
                if name != "defaultdict" {
                    match arg(0) {
                        None => {}
                        Some(Node::Dict(p)) => pairs = p.clone(),
                        Some(Node::List(v)) => {
                            for &pair in v {
                                match &self.nodes[pair] {
                                    Node::Tuple(kv) if kv.len() == 2 => pairs.push((kv[0], kv[1])),
                                    _ => return Err(self.err("dict items are not pairs")),
                                }
                            }
                        }
                        Some(_) => return Err(self.err("unsupported dict constructor argument")),
                    }
                }
                Node::Dict(pairs)
            }
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => self.tensor(&args)?,
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => match args.first() {
                Some(&data) if matches!(self.nodes[data], Node::Tensor(_)) => return Ok(data),
                _ => return Err(self.err("parameter data is not a tensor")),
            },
            ("torch._tensor", "_rebuild_from_type_v2") if depth < 4 => {
                let (Some(&inner), Some(Node::Tuple(inner_args))) = (args.first(), arg(2)) else {
                    return Err(self.err("bad _rebuild_from_type_v2 arguments"));
                };
                return self.call(inner, inner_args.clone(), depth + 1);
            }
            ("torch", "Size") => Node::Tuple(items(arg(0)).ok_or_else(|| self.err("bad torch.Size"))?),
            ("builtins", "set" | "frozenset") => Node::List(items(arg(0)).ok_or_else(|| self.err("bad set"))?),
            ("_codecs", "encode") => match (arg(0), arg(1)) {
                (Some(Node::Str(s)), Some(Node::Str(enc))) if enc == "latin1" || enc == "latin-1" => {
                    let b: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
                    Node::Bytes(b.ok_or_else(|| self.err("non latin-1 text in encoded bytes"))?)
                }
                (Some(Node::Str(s)), Some(Node::Str(enc))) if enc == "utf-8" || enc == "utf8" => {
                    Node::Bytes(s.as_bytes().to_vec())
                }
                _ => return Err(self.err("unsupported _codecs.encode arguments")),
            },
            ("builtins", "bytes" | "bytearray") if args.is_empty() => Node::Bytes(Vec::new()),
            ("copyreg", "_reconstructor" | "__newobj__") => match arg(0) {
                Some(Node::Global { module, name }) => Node::Object {
                    class: format!("{module}.{name}"),
                    args: if name == "__newobj__" { args[1..].to_vec() } else { Vec::new() },
                    state: None,
                },
                _ => return Err(self.err("copyreg call without a class")),
            },
            _ => Node::Object { class: format!("{module}.{name}"), args, state: None },
        };
        self.alloc(node)
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
    fn tensor(&self, args: &[Id]) -> Result<Node, CheckpointError> {
        let arg = |i: usize| args.get(i).map(|&id| &self.nodes[id]);
        let Some(Node::Storage(storage)) = arg(0) else {
            return Err(self.err("tensor storage is not a storage persistent id"));
        };
        let offset = match arg(1) {
            Some(Node::Int(o)) if *o >= 0 => *o as u64,
            _ => return Err(self.err("tensor storage offset is not a non-negative int")),
        };
        let dims = |n: Option<&Node>, what: &str| -> Result<Vec<u64>, CheckpointError> {
            let Some(Node::Tuple(v) | Node::List(v)) = n else {
                return Err(self.err(format!("tensor {what} is not a tuple")));
            };
            if v.len() > MAX_DIMS {
                return Err(self.err(format!("tensor has {} dimensions, more than {MAX_DIMS}", v.len())));
            }
            v.iter()
                .map(|&id| match self.nodes[id] {
                    Node::Int(i) if i >= 0 => Ok(i as u64),
                    _ => Err(self.err(format!("tensor {what} holds something not a non-negative int"))),
                })
                .collect()
        };
        let size = dims(arg(2), "size")?;
        let stride = dims(arg(3), "stride")?;
        if size.len() != stride.len() {
            return Err(self.err("tensor size and stride differ in length"));
        }
        Ok(Node::Tensor(TensorRef { storage: storage.clone(), offset, size, stride }))
    }
}

/// A GLOBAL, with Python 2 module names mapped to Python 3 ones as pickle's fix_imports does.
fn global(module: String, name: String) -> Node {
    let module = match module.as_str() {
        "__builtin__" => "builtins".to_owned(),
        "copy_reg" => "copyreg".to_owned(),
        _ => module,
    };
    Node::Global { module, name }
}

/// What `to_value` may still allocate: nodes and payload bytes (strings, bytes, tensor data).
pub(crate) struct Budget {
    pub nodes: usize,
    pub bytes: usize,
}

impl Budget {
    pub(crate) fn take_bytes(&mut self, n: usize) -> Result<(), CheckpointError> {
        self.bytes = self.bytes.checked_sub(n).ok_or_else(|| {
            CheckpointError::Limit(format!("checkpoint expands to more data than its size justifies ({n} more bytes)"))
        })?;
        Ok(())
    }
}

impl Pickle {
    /// Expand the arena into a [`Value`] tree, reading tensors through `tensor`.
    pub(crate) fn to_value(
        &self,
        tensor: &mut dyn FnMut(&TensorRef, &mut Budget) -> Result<RawTensor, CheckpointError>,
        budget: &mut Budget,
    ) -> Result<Value, CheckpointError> {
        self.convert(self.root, 0, tensor, budget)
    }

    fn convert(
        &self,
        id: Id,
        depth: usize,
        tensor: &mut dyn FnMut(&TensorRef, &mut Budget) -> Result<RawTensor, CheckpointError>,
        budget: &mut Budget,
    ) -> Result<Value, CheckpointError> {
        if depth > MAX_DEPTH {
            return Err(CheckpointError::Limit(format!("data nested deeper than {MAX_DEPTH} levels (or recursive)")));
        }
        budget.nodes = budget
            .nodes
            .checked_sub(1)
            .ok_or_else(|| CheckpointError::Limit("checkpoint expands to more objects than its size justifies".into()))?;
        let mut seq = |ids: &[Id], budget: &mut Budget| -> Result<Vec<Value>, CheckpointError> {
            ids.iter().map(|&i| self.convert(i, depth + 1, tensor, budget)).collect()
        };
        Ok(match &self.nodes[id] {
            Node::None => Value::None,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::Int(*i),
            Node::Float(f) => Value::Float(*f),
            Node::BigInt(b) => {
                budget.take_bytes(b.len())?;
                Value::BigInt(b.clone())
            }
            Node::Str(s) => {
                budget.take_bytes(s.len())?;
                Value::Str(s.clone())
            }
            Node::Bytes(b) => {
                budget.take_bytes(b.len())?;
                Value::Bytes(b.clone())
            }
            Node::Tuple(v) => Value::Tuple(seq(v, budget)?),
            Node::List(v) => Value::List(seq(v, budget)?),
            Node::Dict(pairs) => {
                let mut out = Vec::with_capacity(pairs.len());
                for &(k, v) in pairs {
                    out.push((
                        self.convert(k, depth + 1, tensor, budget)?,
                        self.convert(v, depth + 1, tensor, budget)?,
                    ));
                }
                Value::Dict(out)
            }
            Node::Global { module, name } => Value::Global { module: module.clone(), name: name.clone() },
            Node::Object { class, args, state } => {
                let args = seq(args, budget)?;
                let state = match state {
                    Some(s) => Some(Box::new(self.convert(*s, depth + 1, tensor, budget)?)),
                    None => None,
                };
                Value::Object { class: class.clone(), args, state }
            }
            Node::Tensor(t) => Value::Tensor(tensor(t, budget)?),
            Node::Storage(s) => {
                // A bare storage reads as a 1-d tensor of all its elements.
                let n = s.view.map_or(s.numel, |(_, n)| n);
                let t = TensorRef { storage: s.clone(), offset: 0, size: vec![n], stride: vec![1] };
                Value::Tensor(tensor(&t, budget)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(bytes: &[u8]) -> Result<Value, CheckpointError> {
        let p = parse(bytes, 0)?;
        let mut budget = Budget { nodes: 1000, bytes: 1 << 20 };
        p.to_value(&mut |_, _| Err(CheckpointError::Tensor("no storages".into())), &mut budget)
    }

    #[test]
    fn reads_scalars_strings_and_containers() {
        // {'a': [1, -2, 3.5, True, None, 'é', b'\x01'], 'b': (300, 2**70)}
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00a]q\x01(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00\x88NX\x02\x00\x00\x00\xc3\xa9C\x01\x01eX\x01\x00\x00\x00bM,\x01\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x40\x86u.";
        let v = value(p).unwrap();
        let a = v.get("a").unwrap().as_seq().unwrap();
        assert_eq!(a[0], Value::Int(1));
        assert_eq!(a[1], Value::Int(-2));
        assert_eq!(a[2], Value::Float(3.5));
        assert_eq!(a[3], Value::Bool(true));
        assert_eq!(a[4], Value::None);
        assert_eq!(a[5], Value::Str("é".into()));
        assert_eq!(a[6], Value::Bytes(vec![1]));
        let b = v.get("b").unwrap().as_seq().unwrap();
        assert_eq!(b[0], Value::Int(300));
        assert_eq!(b[1], Value::BigInt(vec![0, 0, 0, 0, 0, 0, 0, 0, 0x40]));
    }

    #[test]
    fn memo_shares_containers_filled_after_put() {
        // l = []; t = (l, l); l.append(7); return t  (l is memoised before it is filled)
        let p = b"\x80\x02]q\x00h\x00h\x00\x86q\x010h\x00K\x07a0h\x01.";
        let v = value(p).unwrap();
        let pair = v.as_seq().unwrap();
        assert_eq!(pair[0], Value::List(vec![Value::Int(7)]));
        assert_eq!(pair[1], pair[0]);
    }

    #[test]
    fn calls_become_inert_objects_with_state() {
        // os.system('touch x') then BUILD with a dict state
        let p = b"\x80\x02cos\nsystem\nX\x07\x00\x00\x00touch x\x85R}X\x01\x00\x00\x00kK\x01sb.";
        let v = value(p).unwrap();
        let Value::Object { class, args, .. } = &v else { panic!("{v:?}") };
        assert_eq!(class, "os.system");
        assert_eq!(args, &[Value::Str("touch x".into())]);
        assert_eq!(v.get("k"), Some(&Value::Int(1)));
    }

    #[test]
    fn cycles_and_exponential_sharing_are_refused() {
        // l = []; l.append(l)
        let cyc = b"\x80\x02]q\x00h\x00a.";
        assert!(value(cyc).unwrap_err().to_string().contains("deeper"));
        // t0 = (); t1 = (t0, t0); ... 40 times: 2^40 nodes once expanded
        let mut p = b"\x80\x02)".to_vec();
        for _ in 0..40 {
            p.extend_from_slice(b"\x32\x86");
        }
        p.push(b'.');
        assert!(matches!(value(&p), Err(CheckpointError::Limit(_))));
    }

    #[test]
    fn malformed_pickles_give_offsets() {
        let e = value(b"\x80\x02X\xff\x00\x00\x00ab").unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = value(b"\x80\x02a.").unwrap_err();
        assert!(e.to_string().contains("underflow"), "{e}");
        let e = value(b"\x80\x02h\x05.").unwrap_err();
        assert!(e.to_string().contains("memo key 5"), "{e}");
        let e = value(b"\x80\x02\x97.").unwrap_err();
        assert!(e.to_string().contains("opcode 0x97"), "{e}");
    }
}
