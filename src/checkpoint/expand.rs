//! Expands a parsed pickle's arena into a [`Value`] tree. Memo references are shared in the
//! arena but copied here, so this is where a small file could blow up: the walk stops past
//! [`MAX_DEPTH`] levels (which also ends recursive structures) and takes every node and every
//! payload byte (strings, bytes, tensor data) from a [`Budget`] sized from the input.

use super::pickle::{Id, Node, Pickle, TensorRef};
use super::value::{RawTensor, Value};
use super::{CheckpointError, MAX_DEPTH};

/// What `to_value` may still allocate: nodes and payload bytes (strings, bytes, tensor data).
pub(crate) struct Budget {
    pub nodes: usize,
    pub bytes: usize,
}

impl Budget {
    pub(crate) fn take_bytes(&mut self, n: usize) -> Result<(), CheckpointError> {
        self.bytes = self.bytes.checked_sub(n).ok_or_else(|| {
            CheckpointError::Limit(format!(
                "checkpoint expands to more data than its size justifies ({n} more bytes)"
            ))
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
            return Err(CheckpointError::Limit(format!(
                "data nested deeper than {MAX_DEPTH} levels (or recursive)"
            )));
        }
        budget.nodes = budget.nodes.checked_sub(1).ok_or_else(|| {
            CheckpointError::Limit("checkpoint expands to more objects than its size justifies".into())
        })?;
        let mut seq = |ids: &[Id], budget: &mut Budget| -> Result<Vec<Value>, CheckpointError> {
            ids.iter()
                .map(|&i| self.convert(i, depth + 1, tensor, budget))
                .collect()
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
            Node::Global { module, name } => Value::Global {
                module: module.clone(),
                name: name.clone(),
            },
            Node::Object { class, args, state } => {
                let args = seq(args, budget)?;
                let state = match state {
                    Some(s) => Some(Box::new(self.convert(*s, depth + 1, tensor, budget)?)),
                    None => None,
                };
                Value::Object {
                    class: class.clone(),
                    args,
                    state,
                }
            }
            Node::Tensor(t) => Value::Tensor(tensor(t, budget)?),
            Node::Storage(s) => {
                // A bare storage reads as a 1-d tensor of all its elements.
                let n = s.view.map_or(s.numel, |(_, n)| n);
                let t = TensorRef {
                    storage: (**s).clone(),
                    offset: 0,
                    size: vec![n],
                    stride: vec![1],
                };
                Value::Tensor(tensor(&t, budget)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::pickle::parse;
    use super::*;

    fn value(bytes: &[u8]) -> Result<Value, CheckpointError> {
        let mut budget = Budget {
            nodes: 1000,
            bytes: 1 << 20,
        };
        parse(bytes, 0)?.to_value(
            &mut |_, _| Err(CheckpointError::Tensor("none".into())),
            &mut budget,
        )
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
}
