//! JSON nesting: what the hub accepts, and how it reads back what it stored.
//!
//! Every store wraps the values it keeps (a filter, a state value, an inbox
//! record) in a few levels of its own, and serde_json's reader refuses
//! documents nested 128 deep by default. So the hub bounds the nesting of
//! the values it keeps at the edge, at [`MAX_DEPTH`] — far below that, for
//! every store — and reads its own records back with [`from_slice`], which
//! has no such limit: a record the hub wrote is always readable again,
//! including records written before the bound existed.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// The deepest nesting of arrays and objects in a kept value (a publish's
/// `filter`, a state value or patch). `{"a": 1}` nests 1 deep, a scalar 0.
pub const MAX_DEPTH: usize = 32;

/// How deep `value` nests (iteratively: any depth is measured safely).
pub fn depth(value: &Value) -> usize {
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
pub fn too_deep(value: &Value) -> Option<String> {
    let depth = depth(value);
    (depth > MAX_DEPTH).then(|| format!("nests {depth} levels deep; the limit is {MAX_DEPTH}"))
}

/// Reads a record the hub stored, whatever its nesting (see the module
/// documentation). Only for the hub's own records: what comes from outside
/// is parsed with serde_json's default limit.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let value = T::deserialize(&mut de)?;
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
        let deep: Value = from_slice(nest(500).as_bytes()).unwrap();
        assert_eq!(depth(&deep), 500);
        assert!(too_deep(&deep).unwrap().contains("500 levels"));
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
    }
}
