//! Avro helpers that know the schema: exact decimal conversion between `rust_decimal` and the
//! Avro `decimal` logical type, and a schema-aware rendering of any Avro value as JSON (for
//! `tail`), where decimals keep their scale and timestamps read as RFC 3339.
//!
//! Money never passes through a float here: a decimal is rescaled exactly or refused.

use std::collections::HashMap;

use apache_avro::schema::{Name, Schema};
use apache_avro::types::Value;
use rust_decimal::Decimal;
use serde_json::{json, Map, Value as Json};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecimalError {
    #[error("{value} has more than {scale} decimal places")]
    Scale { value: Decimal, scale: u32 },
    #[error("{value} does not fit decimal({precision},{scale})")]
    Precision { value: Decimal, precision: usize, scale: u32 },
    #[error("invalid decimal bytes: {0}")]
    Bytes(String),
}

/// Encodes `value` as an Avro decimal of the given precision and scale: the unscaled integer in
/// big-endian two's complement. Refuses rather than rounds.
pub fn decimal_to_avro(value: Decimal, precision: usize, scale: u32) -> Result<Value, DecimalError> {
    let mut v = value;
    if v.scale() > scale {
        let trimmed = v.normalize();
        if trimmed.scale() > scale {
            return Err(DecimalError::Scale { value, scale });
        }
        v = trimmed;
    }
    v.rescale(scale);
    if v.scale() != scale {
        return Err(DecimalError::Precision { value, precision, scale });
    }
    let unscaled: i128 = v.mantissa();
    let digits = if unscaled == 0 { 1 } else { unscaled.unsigned_abs().to_string().len() };
    if digits > precision {
        return Err(DecimalError::Precision { value, precision, scale });
    }
    let bytes = unscaled.to_be_bytes();
    // Minimal two's complement: drop leading bytes that only repeat the sign.
    let mut start = 0;
    while start < bytes.len() - 1 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0x00 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    Ok(Value::Decimal(apache_avro::Decimal::from(&bytes[start..])))
}

/// Decodes an Avro decimal (unscaled two's complement bytes) at `scale`.
pub fn decimal_from_avro(d: &apache_avro::Decimal, scale: u32) -> Result<Decimal, DecimalError> {
    let bytes: Vec<u8> = Vec::<u8>::try_from(d).map_err(|e| DecimalError::Bytes(e.to_string()))?;
    decimal_from_bytes(&bytes, scale)
}

fn decimal_from_bytes(bytes: &[u8], scale: u32) -> Result<Decimal, DecimalError> {
    if bytes.len() > 16 {
        return Err(DecimalError::Bytes(format!("{} bytes exceed 128 bits", bytes.len())));
    }
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut buf = if negative { [0xffu8; 16] } else { [0u8; 16] };
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    let unscaled = i128::from_be_bytes(buf);
    Decimal::try_from_i128_with_scale(unscaled, scale).map_err(|e| DecimalError::Bytes(e.to_string()))
}

/// Renders a decoded value as JSON using its writer schema: decimals as exact strings,
/// timestamps as RFC 3339, enums as their symbol, unions unwrapped, bytes as hex.
pub fn to_json(value: &Value, schema: &Schema) -> Json {
    let mut names = HashMap::new();
    collect_names(schema, &mut names);
    render(value, schema, &names)
}

fn collect_names<'a>(schema: &'a Schema, names: &mut HashMap<Name, &'a Schema>) {
    match schema {
        Schema::Record(r) => {
            names.insert(r.name.clone(), schema);
            for f in &r.fields {
                collect_names(&f.schema, names);
            }
        }
        Schema::Enum(e) => {
            names.insert(e.name.clone(), schema);
        }
        Schema::Fixed(f) => {
            names.insert(f.name.clone(), schema);
        }
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        Schema::Union(u) => {
            for s in u.variants() {
                collect_names(s, names);
            }
        }
        _ => {}
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn render(value: &Value, schema: &Schema, names: &HashMap<Name, &Schema>) -> Json {
    let schema = match schema {
        Schema::Ref { name } => names.get(name).copied().unwrap_or(schema),
        s => s,
    };
    match (value, schema) {
        (Value::Null, _) => Json::Null,
        (Value::Boolean(b), _) => json!(b),
        (Value::Int(i), _) => json!(i),
        (Value::Long(l), _) => json!(l),
        (Value::Float(f), _) => json!(f),
        (Value::Double(d), _) => json!(d),
        (Value::String(s), _) | (Value::Enum(_, s), _) => json!(s),
        (Value::Uuid(u), _) => json!(u.to_string()),
        (Value::Bytes(b), _) | (Value::Fixed(_, b), _) => json!(hex(b)),
        (Value::Decimal(d), Schema::Decimal(ds)) => match decimal_from_avro(d, ds.scale as u32) {
            Ok(dec) => json!(dec.to_string()),
            Err(e) => json!(format!("<invalid decimal: {e}>")),
        },
        (Value::Decimal(d), _) => json!(hex(&Vec::<u8>::try_from(d).unwrap_or_default())),
        (Value::Date(days), _) => {
            let date = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|e| e.checked_add_signed(chrono::TimeDelta::days(i64::from(*days))));
            date.map(|d| json!(d.to_string())).unwrap_or(json!(days))
        }
        (Value::TimestampMillis(ms), _) | (Value::LocalTimestampMillis(ms), _) => {
            chrono::DateTime::from_timestamp_millis(*ms).map(|t| json!(t.to_rfc3339())).unwrap_or(json!(ms))
        }
        (Value::TimestampMicros(us), _) | (Value::LocalTimestampMicros(us), _) => {
            chrono::DateTime::from_timestamp_micros(*us).map(|t| json!(t.to_rfc3339())).unwrap_or(json!(us))
        }
        (Value::TimeMillis(t), _) => json!(t),
        (Value::TimeMicros(t), _) => json!(t),
        (Value::Union(i, inner), Schema::Union(u)) => match u.variants().get(*i as usize) {
            Some(s) => render(inner, s, names),
            None => render(inner, &Schema::Null, names),
        },
        (Value::Union(_, inner), s) => render(inner, s, names),
        (Value::Array(items), Schema::Array(a)) => Json::Array(items.iter().map(|v| render(v, &a.items, names)).collect()),
        (Value::Map(m), Schema::Map(ms)) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Json::Object(keys.into_iter().map(|k| (k.clone(), render(&m[k], &ms.types, names))).collect())
        }
        (Value::Record(fields), Schema::Record(rs)) => {
            let mut out = Map::new();
            for (name, v) in fields {
                let fs = rs.fields.iter().find(|f| &f.name == name).map(|f| &f.schema).unwrap_or(&Schema::Null);
                out.insert(name.clone(), render(v, fs, names));
            }
            Json::Object(out)
        }
        // Shapes without their schema (should not happen for decoded data): best effort.
        (Value::Array(items), _) => Json::Array(items.iter().map(|v| render(v, &Schema::Null, names)).collect()),
        (Value::Map(m), _) => Json::Object(m.iter().map(|(k, v)| (k.clone(), render(v, &Schema::Null, names))).collect()),
        (Value::Record(fields), _) => {
            Json::Object(fields.iter().map(|(k, v)| (k.clone(), render(v, &Schema::Null, names))).collect())
        }
        (other, _) => json!(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn roundtrip(s: &str, precision: usize, scale: u32) -> Decimal {
        match decimal_to_avro(Decimal::from_str(s).unwrap(), precision, scale).unwrap() {
            Value::Decimal(d) => decimal_from_avro(&d, scale).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decimals_round_trip_exactly() {
        for s in ["0", "0.01", "-0.01", "1234567890123.45", "-1234567890123.45", "127", "128", "-128", "-129", "255.5"] {
            assert_eq!(roundtrip(s, 15, 2), Decimal::from_str(s).unwrap(), "{s}");
        }
        assert_eq!(roundtrip("12.3400", 15, 2).to_string(), "12.34");
    }

    #[test]
    fn decimals_refuse_rounding_and_overflow() {
        assert!(matches!(decimal_to_avro(Decimal::from_str("0.001").unwrap(), 15, 2), Err(DecimalError::Scale { .. })));
        assert!(matches!(
            decimal_to_avro(Decimal::from_str("100000000.00").unwrap(), 10, 2),
            Err(DecimalError::Precision { .. })
        ));
    }

    #[test]
    fn minimal_twos_complement_bytes() {
        let bytes = |s: &str| match decimal_to_avro(Decimal::from_str(s).unwrap(), 15, 0).unwrap() {
            Value::Decimal(d) => Vec::<u8>::try_from(&d).unwrap(),
            _ => unreachable!(),
        };
        assert_eq!(bytes("0"), vec![0]);
        assert_eq!(bytes("127"), vec![0x7f]);
        assert_eq!(bytes("128"), vec![0x00, 0x80]);
        assert_eq!(bytes("-1"), vec![0xff]);
        assert_eq!(bytes("-128"), vec![0x80]);
        assert_eq!(bytes("-129"), vec![0xff, 0x7f]);
    }
}
