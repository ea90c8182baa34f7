//! AMQP values as JSON, the way RabbitMQ's management API shows and accepts them: tables as
//! objects, long strings as (lossy UTF-8) strings, integers as numbers; JSON integers become
//! signed 64-bit `l` values, floats doubles, null `V`.

use bytes::Bytes;
use lockgate_wire::{BasicProperties, FieldTable, FieldValue};
use serde_json::{json, Map, Number, Value};

/// A field table as a JSON object.
pub fn table_to_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(value: &FieldValue) -> Value {
    match value {
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::I8(n) => json!(n),
        FieldValue::U8(n) => json!(n),
        FieldValue::I16(n) => json!(n),
        FieldValue::U16(n) => json!(n),
        FieldValue::I32(n) => json!(n),
        FieldValue::U32(n) => json!(n),
        FieldValue::I64(n) => json!(n),
        FieldValue::F32(n) => json!(n),
        FieldValue::F64(n) => json!(n),
        FieldValue::Decimal(d) => json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b).into_owned())
        }
        FieldValue::Array(items) => Value::Array(items.iter().map(value_to_json).collect()),
        FieldValue::Timestamp(t) => json!(t),
        FieldValue::Table(t) => table_to_json(t),
        FieldValue::Void => Value::Null,
    }
}

/// A JSON object as a field table.
pub fn object_to_table(map: &Map<String, Value>) -> FieldTable {
    map.iter()
        .map(|(k, v)| (k.clone(), json_to_value(v)))
        .collect()
}

/// The table a request gives as `what` (`arguments`, `headers`): an object, or null or `[]`
/// for none (older RabbitMQ exports write an empty table as `[]`).
///
/// # Errors
/// Any other JSON value: silently taking it as no arguments would declare something else than
/// the request asked for.
pub fn table_from_json(what: &str, value: &Value) -> Result<FieldTable, String> {
    match value {
        Value::Object(map) => Ok(object_to_table(map)),
        Value::Null => Ok(FieldTable::default()),
        Value::Array(items) if items.is_empty() => Ok(FieldTable::default()),
        other => Err(format!("{what} must be an object, got {other}")),
    }
}

fn json_to_value(value: &Value) -> FieldValue {
    match value {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => number(n),
        Value::String(s) => FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes())),
        Value::Array(items) => FieldValue::Array(items.iter().map(json_to_value).collect()),
        Value::Object(map) => FieldValue::Table(object_to_table(map)),
    }
}

fn number(n: &Number) -> FieldValue {
    if let Some(i) = n.as_i64() {
        FieldValue::I64(i)
    } else if let Some(u) = n.as_u64() {
        i64::try_from(u).map_or(FieldValue::F64(u as f64), FieldValue::I64)
    } else {
        FieldValue::F64(n.as_f64().unwrap_or(0.0))
    }
}

/// Message properties as RabbitMQ's API shows them (absent properties are left out).
pub fn properties_to_json(p: &BasicProperties) -> Value {
    let mut map = Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            map.insert(key.to_owned(), v);
        }
    };
    put("content_type", p.content_type.clone().map(Value::String));
    put(
        "content_encoding",
        p.content_encoding.clone().map(Value::String),
    );
    put("headers", p.headers.as_ref().map(table_to_json));
    put("delivery_mode", p.delivery_mode.map(|v| json!(v)));
    put("priority", p.priority.map(|v| json!(v)));
    put(
        "correlation_id",
        p.correlation_id.clone().map(Value::String),
    );
    put("reply_to", p.reply_to.clone().map(Value::String));
    put("expiration", p.expiration.clone().map(Value::String));
    put("message_id", p.message_id.clone().map(Value::String));
    put("timestamp", p.timestamp.map(|v| json!(v)));
    put("type", p.kind.clone().map(Value::String));
    put("user_id", p.user_id.clone().map(Value::String));
    put("app_id", p.app_id.clone().map(Value::String));
    put("cluster_id", p.cluster_id.clone().map(Value::String));
    Value::Object(map)
}

/// Message properties from the JSON a publish request carries.
///
/// # Errors
/// A property of the wrong type, named.
pub fn properties_from_json(value: &Value) -> Result<BasicProperties, String> {
    let mut p = BasicProperties::default();
    let map = match value {
        Value::Object(map) => map,
        Value::Null => return Ok(p),
        other => return Err(format!("properties must be an object, got {other}")),
    };
    for (key, v) in map {
        let text = || {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("property {key} must be a string"))
        };
        let octet = || {
            v.as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| format!("property {key} must be an integer 0..255"))
        };
        match key.as_str() {
            "content_type" => p.content_type = Some(text()?),
            "content_encoding" => p.content_encoding = Some(text()?),
            "headers" => p.headers = Some(table_from_json("property headers", v)?),
            "delivery_mode" => p.delivery_mode = Some(octet()?),
            "priority" => p.priority = Some(octet()?),
            "correlation_id" => p.correlation_id = Some(text()?),
            "reply_to" => p.reply_to = Some(text()?),
            "expiration" => p.expiration = Some(text()?),
            "message_id" => p.message_id = Some(text()?),
            "timestamp" => {
                p.timestamp = Some(
                    v.as_u64()
                        .ok_or_else(|| format!("property {key} must be an integer"))?,
                );
            }
            "type" => p.kind = Some(text()?),
            "user_id" => p.user_id = Some(text()?),
            "app_id" => p.app_id = Some(text()?),
            "cluster_id" => p.cluster_id = Some(text()?),
            other => return Err(format!("unknown property {other}")),
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_through_json() {
        let value = json!({"x-max-length": 10, "s": "text", "b": true, "nested": {"f": 1.5},
                           "list": [1, "a"], "none": null});
        let table = table_from_json("arguments", &value).unwrap();
        assert_eq!(table.get("x-max-length"), Some(&FieldValue::I64(10)));
        assert_eq!(table_to_json(&table), value);
        for none in [json!(null), json!([])] {
            assert_eq!(
                table_from_json("arguments", &none),
                Ok(FieldTable::default())
            );
        }
        for wrong in [json!("x"), json!(5), json!(true), json!([1])] {
            assert!(table_from_json("arguments", &wrong).is_err(), "{wrong}");
        }
    }

    #[test]
    fn properties_round_trip_through_json() {
        let value = json!({"delivery_mode": 2, "content_type": "text/plain",
                           "headers": {"k": "v"}, "type": "t", "timestamp": 5});
        let p = properties_from_json(&value).unwrap();
        assert_eq!(p.delivery_mode, Some(2));
        assert_eq!(p.kind.as_deref(), Some("t"));
        assert_eq!(properties_to_json(&p), value);
        assert!(properties_from_json(&json!({"delivery_mode": "x"})).is_err());
        assert!(properties_from_json(&json!({"bogus": 1})).is_err());
        assert!(properties_from_json(&json!({"headers": "x"})).is_err());
        assert!(properties_from_json(&json!("x")).is_err());
    }
}
