//! Plain-text tables for the terminal: one header row, columns padded to their widest cell.

use std::fmt::Write as _;

use serde_json::Value;

use crate::ListWhat;

fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// Renders `rows` under `headers`.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (c, w) in cells.zip(&widths) {
            let _ = write!(text, "{c:<w$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut out, &mut headers.iter().copied());
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str));
    }
    out
}

fn columns(items: &Value, spec: &[(&str, &str)]) -> String {
    let headers: Vec<&str> = spec.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> = items
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            spec.iter()
                .map(|(_, pointer)| cell(item.pointer(pointer).unwrap_or(&Value::Null)))
                .collect()
        })
        .collect();
    render(&headers, &rows)
}

/// A `list` command's table.
pub fn list(what: ListWhat, items: &Value) -> String {
    let spec: &[(&str, &str)] = match what {
        ListWhat::Queues => &[
            ("vhost", "/vhost"),
            ("name", "/name"),
            ("ready", "/messages_ready"),
            ("unacked", "/messages_unacknowledged"),
            ("consumers", "/consumers"),
            ("publish/s", "/message_stats/publish_details/rate"),
            ("deliver/s", "/message_stats/deliver_get_details/rate"),
            ("ack/s", "/message_stats/ack_details/rate"),
            ("oldest_ready_s", "/oldest_ready_age_seconds"),
            ("durable", "/durable"),
        ],
        ListWhat::Exchanges => &[
            ("vhost", "/vhost"),
            ("name", "/name"),
            ("type", "/type"),
            ("durable", "/durable"),
            ("auto_delete", "/auto_delete"),
            ("internal", "/internal"),
        ],
        ListWhat::Bindings => &[
            ("vhost", "/vhost"),
            ("source", "/source"),
            ("destination", "/destination"),
            ("destination_type", "/destination_type"),
            ("routing_key", "/routing_key"),
            ("arguments", "/arguments"),
        ],
        ListWhat::Connections => &[
            ("name", "/name"),
            ("user", "/user"),
            ("vhost", "/vhost"),
            ("channels", "/channels"),
            ("client", "/client_properties/product"),
            ("connected_at", "/connected_at"),
        ],
        ListWhat::Channels => &[
            ("name", "/name"),
            ("user", "/user"),
            ("consumers", "/consumer_count"),
            ("unacked", "/messages_unacknowledged"),
            ("state", "/state"),
        ],
        ListWhat::Consumers => &[
            ("queue", "/queue/name"),
            ("consumer_tag", "/consumer_tag"),
            ("channel", "/channel_details/name"),
            ("ack_required", "/ack_required"),
            ("prefetch", "/prefetch_count"),
            ("unacked", "/messages_unacknowledged"),
            ("oldest_unacked_s", "/oldest_unacked_age_seconds"),
        ],
        ListWhat::Vhosts => &[
            ("name", "/name"),
            ("messages", "/messages"),
            ("ready", "/messages_ready"),
            ("unacked", "/messages_unacknowledged"),
        ],
        ListWhat::Users => &[("name", "/name"), ("tags", "/tags")],
    };
    columns(items, spec)
}

/// The `status` command's summary.
pub fn status(overview: &Value, alarms: &Value) -> String {
    let o = overview;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} on {}",
        cell(&o["product_name"]),
        cell(&o["product_version"]),
        cell(&o["node"])
    );
    let t = &o["object_totals"];
    let _ = writeln!(
        out,
        "connections {}  channels {}  queues {}  exchanges {}  consumers {}",
        cell(&t["connections"]),
        cell(&t["channels"]),
        cell(&t["queues"]),
        cell(&t["exchanges"]),
        cell(&t["consumers"])
    );
    let q = &o["queue_totals"];
    let _ = writeln!(
        out,
        "messages {}  ready {}  unacked {}",
        cell(&q["messages"]),
        cell(&q["messages_ready"]),
        cell(&q["messages_unacknowledged"])
    );
    let s = &o["message_stats"];
    let _ = writeln!(
        out,
        "rates/s  publish {}  deliver {}  ack {}  redeliver {}",
        cell(&s["publish_details"]["rate"]),
        cell(&s["deliver_get_details"]["rate"]),
        cell(&s["ack_details"]["rate"]),
        cell(&s["redeliver_details"]["rate"])
    );
    let _ = writeln!(
        out,
        "memory {} / {} bytes",
        cell(&o["memory"]["used"]),
        cell(&o["memory"]["high_watermark"])
    );
    let active: Vec<String> = alarms["alarms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| cell(&a["resource"]))
        .collect();
    if active.is_empty() {
        out.push_str("alarms: none\n");
    } else {
        let _ = writeln!(out, "alarms: {}", active.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_to_the_widest_cell() {
        let text = render(&["a", "bb"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(text, "a     bb\nlong  x\n");
    }
}
