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

use super::CheckpointError;
use super::reduce::{self, Built};
use super::value::DType;

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
    Global {
        module: String,
        name: String,
    },
    Object {
        class: String,
        args: Vec<Id>,
        state: Option<Id>,
    },
    Storage(Box<StorageRef>),
    Tensor(Box<TensorRef>),
}

/// One parsed pickle: the arena, the result and the offset just past its STOP.
pub(crate) struct Pickle {
    pub nodes: Vec<Node>,
    pub root: Id,
    pub end: usize,
}

/// Parse the pickle starting at `data[start]`. Offsets in errors are relative to `data`.
pub(crate) fn parse(data: &[u8], start: usize) -> Result<Pickle, CheckpointError> {
    if start >= data.len() {
        return Err(CheckpointError::Pickle {
            offset: start,
            reason: "no pickle: end of data".into(),
        });
    }
    let mut vm = Vm {
        data,
        pos: start,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        max_nodes: data.len().saturating_sub(start) + 16,
        cells: 0,
        max_cells: CELLS_PER_BYTE * data.len().saturating_sub(start) + 1024,
    };
    let root = vm.run()?;
    Ok(Pickle {
        nodes: vm.nodes,
        root,
        end: vm.pos,
    })
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    max_nodes: usize,
    /// Ids held by containers and call arguments so far, and their limit.
    cells: usize,
    max_cells: usize,
}

/// Container items the arena may hold per byte of pickle. Each item costs at least one opcode
/// byte when first built, but a REDUCE copies its argument tuple: one large memoised tuple
/// passed to many calls (a "REDUCE bomb") would otherwise grow memory with the square of the
/// file's size. Real checkpoints stay far below (a state dict's pickle holds about one item per
/// 20 bytes).
const CELLS_PER_BYTE: usize = 4;

/// How many ids a node holds.
fn cells_of(node: &Node) -> usize {
    match node {
        Node::Tuple(v) | Node::List(v) => v.len(),
        Node::Dict(v) => 2 * v.len(),
        Node::Object { args, .. } => args.len(),
        _ => 0,
    }
}

impl<'a> Vm<'a> {
    fn err(&self, reason: impl Into<String>) -> CheckpointError {
        CheckpointError::Pickle {
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], CheckpointError> {
        let avail = self.data.len().saturating_sub(self.pos);
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
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("unterminated line"))?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| self.err("line is not utf-8"))
    }

    fn alloc(&mut self, node: Node) -> Result<Id, CheckpointError> {
        self.count_cells(cells_of(&node))?;
        if self.nodes.len() >= self.max_nodes {
            return Err(CheckpointError::Limit(format!(
                "pickle builds more than {} objects",
                self.max_nodes
            )));
        }
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    fn count_cells(&mut self, n: usize) -> Result<(), CheckpointError> {
        self.cells = self.cells.saturating_add(n);
        if self.cells > self.max_cells {
            return Err(CheckpointError::Limit(format!(
                "pickle builds more than {} container items (a tuple reused by many calls?)",
                self.max_cells
            )));
        }
        Ok(())
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
        let id = *self
            .memo
            .get(&key)
            .ok_or_else(|| self.err(format!("memo key {key} not set")))?;
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
                    let v = line
                        .parse()
                        .map_err(|_| self.err(format!("bad float literal {line:?}")))?;
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
                    let k = line
                        .parse()
                        .map_err(|_| self.err(format!("bad memo key {line:?}")))?;
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
                    let k = line
                        .parse()
                        .map_err(|_| self.err(format!("bad memo key {line:?}")))?;
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
                    let n = match &self.nodes[args] {
                        Node::Tuple(a) => a.len(),
                        _ => return Err(self.err("call arguments are not a tuple")),
                    };
                    // the copy below is counted before it is made
                    self.count_cells(n)?;
                    let Node::Tuple(args) = self.nodes[args].clone() else {
                        return Err(self.err("call arguments are not a tuple"));
                    };
                    let id = match reduce::call(&self.nodes, func, args, 0).map_err(|e| self.err(e))? {
                        Built::Existing(id) => id,
                        Built::New(node) => self.alloc(node)?,
                    };
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
                    let node = reduce::persistent_load(&self.nodes, pid).map_err(|e| self.err(e))?;
                    self.push(node)?;
                }
                _ => return Err(self.err(format!("unsupported pickle opcode {op:#04x}"))),
            }
        }
    }

    fn pairs(&self, items: Vec<Id>) -> Result<Vec<(Id, Id)>, CheckpointError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("odd number of items for a dict"));
        }
        Ok(items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
    }

    fn extend(&mut self, items: Vec<Id>) -> Result<(), CheckpointError> {
        self.count_cells(items.len())?;
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
        self.count_cells(2 * pairs.len())?;
        let target = self.top()?;
        match &mut self.nodes[target] {
            Node::Dict(v) => {
                v.extend(pairs);
                Ok(())
            }
            _ => Err(self.err("set item on something that is not a dict")),
        }
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

#[cfg(test)]
#[path = "pickle_tests.rs"]
mod tests;
