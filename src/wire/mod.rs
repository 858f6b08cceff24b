//! Wire types: the Avro records of `avro/` as Rust values, converted at the edge. Domain code
//! never sees `apache_avro::types::Value`; a record that does not have the shape its schema
//! promises is a [`WireError`] naming the field, which the processor sends to dead letters.
//! The events the jobs publish are the typed structs of [`events`], turned into values there.

pub mod events;
pub mod avro;
pub mod internal;
pub mod tick;
pub mod topic;

pub use topic::Topic;

/// A record ready for a topic: its key and its payload (built by [`events::emit`]; encoded
/// by the processor with the topic's registered schema).
#[derive(Debug, Clone)]
pub struct Emit {
    pub topic: Topic,
    pub key: String,
    pub value: Payload,
}

/// What an emitted record's value is made from.
#[derive(Debug, Clone)]
pub enum Payload {
    /// An Avro value, written with the schema (validated on the way).
    Value(Value),
    /// An event written straight from its fields with the schema (no intermediate value): for
    /// the events a run emits by the million, whose direct writing is proven byte-identical to
    /// the value's ([`events::Event::DIRECT`]).
    Direct(std::sync::Arc<dyn events::Direct>),
}

impl Payload {
    /// The payload as an Avro value (tests and tools that look inside records).
    pub fn value(&self) -> Result<Value, events::EventError> {
        match self {
            Payload::Value(v) => Ok(v.clone()),
            Payload::Direct(d) => d.value(),
        }
    }
}

use std::collections::BTreeMap;

use apache_avro::types::Value;
use chrono::{DateTime, Utc};

/// Namespace of every deterministic (UUIDv5) id the tool derives.
pub const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5c4e_d1a0_7b1f_4c53_9a1e_3f0b_2d6c_8e41);

/// A deterministic id for `parts` (joined unambiguously): the same decision always gets the
/// same id, so consumers deduplicating by id see one event per decision.
pub fn derived_id(parts: &[&str]) -> uuid::Uuid {
    use std::fmt::Write;
    // Each part as `<length>:<part>`; built in one buffer (two ids per cancelled order).
    let mut name = String::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for p in parts {
        let _ = write!(name, "{}:", p.len());
        name.push_str(p);
    }
    uuid::Uuid::new_v5(&ID_NAMESPACE, name.as_bytes())
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("not a {expected} record (got {found})")]
    WrongRecord { expected: &'static str, found: String },
    #[error("field `{field}`: {message}")]
    Field { field: &'static str, message: String },
}

fn field_err(field: &'static str, message: impl Into<String>) -> WireError {
    WireError::Field { field, message: message.into() }
}

/// Field access on a decoded record, by name (writer field order may differ across versions).
pub struct Fields(BTreeMap<String, Value>);

impl Fields {
    pub fn of(value: Value, expected: &'static str) -> Result<Fields, WireError> {
        match value {
            Value::Record(fields) => Ok(Fields(fields.into_iter().collect())),
            other => Err(WireError::WrongRecord { expected, found: format!("{other:?}").chars().take(60).collect() }),
        }
    }

    fn take(&mut self, field: &'static str) -> Result<Value, WireError> {
        match self.0.remove(field) {
            Some(Value::Union(_, inner)) => Ok(*inner),
            Some(v) => Ok(v),
            None => Err(field_err(field, "missing")),
        }
    }

    pub fn string(&mut self, field: &'static str) -> Result<String, WireError> {
        match self.take(field)? {
            Value::String(s) | Value::Enum(_, s) => Ok(s),
            // A `uuid` string field decodes as a UUID.
            Value::Uuid(u) => Ok(u.to_string()),
            other => Err(field_err(field, format!("expected a string, got {other:?}"))),
        }
    }

    pub fn opt_string(&mut self, field: &'static str) -> Result<Option<String>, WireError> {
        match self.0.contains_key(field) {
            false => Ok(None),
            true => match self.take(field)? {
                Value::Null => Ok(None),
                Value::String(s) => Ok(Some(s)),
                other => Err(field_err(field, format!("expected a string or null, got {other:?}"))),
            },
        }
    }

    /// An optional bytes field (absent: `None`, as its schema default).
    pub fn opt_bytes(&mut self, field: &'static str) -> Result<Option<Vec<u8>>, WireError> {
        match self.0.contains_key(field) {
            false => Ok(None),
            true => match self.take(field)? {
                Value::Null => Ok(None),
                Value::Bytes(b) => Ok(Some(b)),
                other => Err(field_err(field, format!("expected bytes or null, got {other:?}"))),
            },
        }
    }

    pub fn int(&mut self, field: &'static str) -> Result<i32, WireError> {
        match self.take(field)? {
            Value::Int(i) => Ok(i),
            other => Err(field_err(field, format!("expected an int, got {other:?}"))),
        }
    }

    pub fn long(&mut self, field: &'static str) -> Result<i64, WireError> {
        match self.take(field)? {
            Value::Long(i) => Ok(i),
            Value::Int(i) => Ok(i64::from(i)),
            other => Err(field_err(field, format!("expected a long, got {other:?}"))),
        }
    }

    pub fn timestamp(&mut self, field: &'static str) -> Result<DateTime<Utc>, WireError> {
        let ms = match self.take(field)? {
            Value::TimestampMillis(ms) | Value::Long(ms) => ms,
            other => return Err(field_err(field, format!("expected timestamp-millis, got {other:?}"))),
        };
        DateTime::from_timestamp_millis(ms).ok_or_else(|| field_err(field, format!("{ms} ms is out of range")))
    }

    pub fn string_map(&mut self, field: &'static str) -> Result<BTreeMap<String, String>, WireError> {
        self.map(field, "a string", |v| match v {
            Value::String(s) => Ok(s),
            other => Err(other),
        })
    }

    pub fn long_map(&mut self, field: &'static str) -> Result<BTreeMap<String, i64>, WireError> {
        self.map(field, "a long", |v| match v {
            Value::Long(n) => Ok(n),
            other => Err(other),
        })
    }

    /// A map field (absent: empty, as its schema default) whose values `convert` accepts.
    fn map<T>(
        &mut self,
        field: &'static str,
        expected: &str,
        convert: impl Fn(Value) -> Result<T, Value>,
    ) -> Result<BTreeMap<String, T>, WireError> {
        if !self.0.contains_key(field) {
            return Ok(BTreeMap::new());
        }
        match self.take(field)? {
            Value::Map(m) => m
                .into_iter()
                .map(|(k, v)| match convert(v) {
                    Ok(t) => Ok((k, t)),
                    Err(other) => Err(field_err(field, format!("value of `{k}` is not {expected}: {other:?}"))),
                })
                .collect(),
            other => Err(field_err(field, format!("expected a map, got {other:?}"))),
        }
    }

    pub fn string_array(&mut self, field: &'static str) -> Result<Vec<String>, WireError> {
        if !self.0.contains_key(field) {
            return Ok(Vec::new());
        }
        match self.take(field)? {
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(field_err(field, format!("item is not a string: {other:?}"))),
                })
                .collect(),
            other => Err(field_err(field, format!("expected an array, got {other:?}"))),
        }
    }
}

pub fn ts(t: DateTime<Utc>) -> Value {
    Value::TimestampMillis(t.timestamp_millis())
}

pub fn string_map(m: &BTreeMap<String, String>) -> Value {
    Value::Map(m.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

pub fn long_map(m: &BTreeMap<String, i64>) -> Value {
    Value::Map(m.iter().map(|(k, v)| (k.clone(), Value::Long(*v))).collect())
}

pub fn opt_string(v: &Option<String>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
    }
}

/// Enum symbols are written by name; apache-avro resolves the index against the schema.
pub fn enum_value(symbols: &[&str], symbol: &str) -> Value {
    let idx = symbols.iter().position(|s| *s == symbol).unwrap_or(0) as u32;
    Value::Enum(idx, symbol.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Derived ids are part of the contract (consumers deduplicate by them, and a retried chunk
    /// must derive the ones its first attempt emitted): pinned to values computed apart from
    /// this code, as UUIDv5 over `<byte length>:<part>` for each part.
    #[test]
    fn derived_ids_are_pinned() {
        assert_eq!(derived_id(&["order-cancelled", "run-1", "o-0000001"]).to_string(), "945e0779-f4bd-557a-860e-eccb01963e4d");
        assert_eq!(derived_id(&["run", "주문-만료", "2026-12-02T00:00", "12"]).to_string(), "d0b69250-ac02-54f9-a004-96f2fdca8e72");
        assert_eq!(derived_id(&[]).to_string(), "1b767971-7b56-5dc9-af0c-731ad582335d");
    }

    #[test]
    fn maps_convert_values_and_name_a_bad_one() {
        let rec = Value::Record(vec![
            ("s".into(), Value::Map([("a".to_string(), Value::String("x".into()))].into_iter().collect())),
            ("n".into(), Value::Map([("c".to_string(), Value::Long(7))].into_iter().collect())),
            ("bad".into(), Value::Map([("k".to_string(), Value::Int(1))].into_iter().collect())),
        ]);
        let mut f = Fields::of(rec, "T").unwrap();
        assert_eq!(f.string_map("s").unwrap()["a"], "x");
        assert_eq!(f.long_map("n").unwrap()["c"], 7);
        assert!(f.long_map("absent").unwrap().is_empty());
        let e = f.long_map("bad").unwrap_err().to_string();
        assert!(e.contains("bad") && e.contains("`k`") && e.contains("a long"), "{e}");
    }
}
