//! JSON nesting: what the hub accepts, and how it reads back what it stored.
//!
//! Every store wraps the values it keeps (a filter, a state value, an inbox
//! record) in a few levels of its own, and serde_json's reader refuses
//! documents nested 128 deep by default. So the hub bounds the nesting of
//! the values it keeps at the edge, at [`MAX_DEPTH`] — far below that, for
//! every store — and reads its own records back with [`from_slice`], which
//! has no such limit: a record the hub wrote is always readable again,
//! including records written before the bound existed.

use serde::de::{DeserializeOwned, DeserializeSeed};
use serde_json::Value;

/// The deepest nesting of arrays and objects in a kept value (a publish's
/// `filter`, a state value or patch). `{"a": 1}` nests 1 deep, a scalar 0.
pub(crate) const MAX_DEPTH: usize = 32;

/// How deep `value` nests (iteratively: any depth is measured safely).
pub(crate) fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, level)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(level + 1);
        stack.extend(children.map(|c| (c, level + 1)));
    }
    deepest
}

/// `None` when `value` nests at most [`MAX_DEPTH`] deep, else why not.
pub(crate) fn too_deep(value: &Value) -> Option<String> {
    let depth = depth(value);
    (depth > MAX_DEPTH).then(|| format!("nests {depth} levels deep; the limit is {MAX_DEPTH}"))
}

/// Deepest nesting [`from_slice`] reads: far above anything the hub writes
/// (values at most [`MAX_DEPTH`], earlier versions at most 128, plus a few
/// levels of wrapping), far below what would exhaust a thread's stack.
pub(crate) const MAX_READ_DEPTH: usize = 256;

/// How deep the JSON text in `bytes` nests (brackets outside strings).
fn nesting(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Reads a record the hub stored, nested up to [`MAX_READ_DEPTH`] (see the
/// module documentation). Only for the hub's own records: what comes from
/// outside is parsed with serde_json's default limit.
pub(crate) fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    from_slice_seed(bytes, std::marker::PhantomData::<T>)
}

/// [`from_slice`] through a seed: for a reader that keeps only part of a
/// record (the others skipped, not built).
pub(crate) fn from_slice_seed<'de, S: DeserializeSeed<'de>>(
    bytes: &'de [u8],
    seed: S,
) -> serde_json::Result<S::Value> {
    // Brackets counted anywhere (strings included) bound the depth from
    // above; only a record with that many needs the exact walk.
    let brackets = bytes.iter().filter(|&&b| b == b'[' || b == b'{').count();
    let depth = match brackets > MAX_READ_DEPTH {
        true => nesting(bytes),
        false => 0,
    };
    if depth > MAX_READ_DEPTH {
        return Err(serde::de::Error::custom(format!(
            "nested {depth} deep, deeper than any record the hub writes ({MAX_READ_DEPTH})"
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let value = seed.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nest(n: usize) -> String {
        "[".repeat(n) + &"]".repeat(n)
    }

    #[test]
    fn depth_counts_containers() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({"a": [1, {"b": [[]]}], "c": 2})), 5);
        let deep: Value = from_slice(nest(200).as_bytes()).unwrap();
        assert_eq!(depth(&deep), 200);
        assert!(too_deep(&deep).unwrap().contains("200 levels"));
        assert!(too_deep(&from_slice(nest(MAX_DEPTH).as_bytes()).unwrap()).is_none());
    }

    #[test]
    fn stored_records_read_back_at_any_depth() {
        // The default reader refuses what the unbounded one reads.
        let record = format!("{{\"target\":{{\"filter\":{{\"k\":{}}}}}}}", nest(127));
        assert!(serde_json::from_str::<Value>(&record).is_err());
        let back: Value = from_slice(record.as_bytes()).unwrap();
        assert_eq!(depth(&back), 130);
        assert!(from_slice::<Value>(b"{} x").is_err(), "trailing bytes");
        // Brackets in strings do not count; past the read limit, an error
        // rather than a stack overflow.
        assert_eq!(nesting(br#"{"a":"[[[\"{{","b":[1]}"#), 2);
        assert!(from_slice::<Value>(nest(MAX_READ_DEPTH + 1).as_bytes()).is_err());
        assert!(from_slice::<Value>(nest(100_000).as_bytes()).is_err());
    }
}
