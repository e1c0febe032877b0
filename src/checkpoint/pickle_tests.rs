//! The pickle VM's tests: scalars, strings and containers, memo sharing, calls kept as inert
//! objects, malformed input named by offset, and a reused tuple refused rather than quadratic.

use super::super::expand::Budget;
use super::super::value::Value;
use super::*;

fn value(bytes: &[u8]) -> Result<Value, CheckpointError> {
    let p = parse(bytes, 0)?;
    let mut budget = Budget {
        nodes: 1000,
        bytes: 1 << 20,
    };
    p.to_value(
        &mut |_, _| Err(CheckpointError::Tensor("no storages".into())),
        &mut budget,
    )
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
    let Value::Object { class, args, .. } = &v else {
        panic!("{v:?}")
    };
    assert_eq!(class, "os.system");
    assert_eq!(args, &[Value::Str("touch x".into())]);
    assert_eq!(v.get("k"), Some(&Value::Int(1)));
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

#[test]
fn a_tuple_reused_by_many_calls_is_refused_not_quadratic() {
    // f = builtins.bar; t = (0,) * 20000; then 20000 times: f(*t) -- 4e8 copied ids
    // (3.2 GB) without the limit, on a pickle of about 150 KB
    let n = 20_000;
    let mut p = b"\x80\x02cbuiltins\nbar\nq\x00(".to_vec();
    for _ in 0..n {
        p.extend_from_slice(b"K\x00");
    }
    p.extend_from_slice(b"tq\x01");
    for _ in 0..n {
        p.extend_from_slice(b"h\x00h\x01R0");
    }
    p.extend_from_slice(b"N.");
    let e = value(&p).unwrap_err();
    assert!(e.to_string().contains("container items"), "{e}");
    // a handful of calls on the same tuple is fine
    let mut ok = b"\x80\x02cbuiltins\nbar\nq\x00(".to_vec();
    for _ in 0..100 {
        ok.extend_from_slice(b"K\x00");
    }
    ok.extend_from_slice(b"tq\x01");
    for _ in 0..3 {
        ok.extend_from_slice(b"h\x00h\x01R0");
    }
    ok.extend_from_slice(b"N.");
    assert_eq!(value(&ok).unwrap(), Value::None);
}
