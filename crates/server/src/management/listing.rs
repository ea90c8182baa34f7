//! RabbitMQ's list query parameters, for every GET under /api: `sort` (a field, dotted for a
//! nested one: `message_stats.publish`) and `sort_reverse=true`, `columns` (comma-separated
//! dotted fields: each item keeps only those, nested as they were; also on single objects),
//! `name` (keep items whose name contains it, ignoring case; with `use_regex=true` a regular
//! expression, also caseless) and pagination: with `page` (from 1) and `page_size` (default
//! 100, at most 500) the answer becomes RabbitMQ's page object `{"filtered_count",
//! "item_count", "items", "page", "page_count", "page_size", "total_count"}`.
//!
//! Applied as a middleware to the JSON the handlers produce, so every list endpoint behaves
//! the same; a request without any of these parameters is passed through untouched.

use std::cmp::Ordering;
use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, Request};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use regex::{Regex, RegexBuilder};
use serde_json::{json, Map, Value};

use super::ApiError;

/// RabbitMQ's default and largest page sizes.
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 500;

/// The middleware: parses the parameters, runs the handler, reshapes its JSON.
pub(super) async fn apply(request: Request, next: Next) -> Response {
    if request.method() != Method::GET {
        return next.run(request).await;
    }
    let Ok(Query(query)) = Query::<HashMap<String, String>>::try_from_uri(request.uri()) else {
        return next.run(request).await;
    };
    let params = match ListParams::parse(&query) {
        Ok(Some(params)) => params,
        Ok(None) => return next.run(request).await,
        Err(e) => return e.into_response(),
    };
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() != StatusCode::OK || !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    match params.apply(value) {
        Ok(value) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(value.to_string()))
        }
        Err(e) => e.into_response(),
    }
}

enum NameFilter {
    Contains(String),
    Regex(Regex),
}

impl NameFilter {
    fn keeps(&self, item: &Value) -> bool {
        let Some(name) = item.get("name").and_then(Value::as_str) else {
            return true;
        };
        match self {
            NameFilter::Contains(part) => name.to_lowercase().contains(part),
            NameFilter::Regex(re) => re.is_match(name),
        }
    }
}

struct ListParams {
    /// Page number (from 1) and size.
    page: Option<(usize, usize)>,
    name: Option<NameFilter>,
    sort: Option<Vec<String>>,
    sort_reverse: bool,
    columns: Option<Vec<Vec<String>>>,
}

fn dotted(path: &str) -> Vec<String> {
    path.split('.').map(str::to_owned).collect()
}

impl ListParams {
    /// `None` when the query has none of the list parameters.
    fn parse(query: &HashMap<String, String>) -> Result<Option<Self>, ApiError> {
        const KEYS: [&str; 7] = [
            "page",
            "page_size",
            "name",
            "use_regex",
            "sort",
            "sort_reverse",
            "columns",
        ];
        if !KEYS.iter().any(|k| query.contains_key(*k)) {
            return Ok(None);
        }
        let page = match query.get("page") {
            None => None,
            Some(raw) => {
                let size_raw = query.get("page_size").map(String::as_str);
                let number = raw.parse::<usize>().ok().filter(|n| *n > 0);
                let size = match size_raw {
                    None => Some(DEFAULT_PAGE_SIZE),
                    Some(s) => s
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE_SIZE).contains(n)),
                };
                match (number, size) {
                    (Some(number), Some(size)) => Some((number, size)),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "Invalid pagination parameters: page number {raw}, page size {}",
                            size_raw.unwrap_or("100")
                        )))
                    }
                }
            }
        };
        let name = match query.get("name").filter(|n| !n.is_empty()) {
            None => None,
            Some(name) if query.get("use_regex").is_some_and(|v| v == "true") => {
                Some(NameFilter::Regex(
                    RegexBuilder::new(name)
                        .case_insensitive(true)
                        .build()
                        .map_err(|e| {
                            ApiError::bad_request(format!("invalid regular expression: {e}"))
                        })?,
                ))
            }
            Some(name) => Some(NameFilter::Contains(name.to_lowercase())),
        };
        let columns = query.get("columns").map(|c| {
            c.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(dotted)
                .collect()
        });
        Ok(Some(ListParams {
            page,
            name,
            sort: query
                .get("sort")
                .filter(|s| !s.is_empty())
                .map(|s| dotted(s)),
            sort_reverse: query.get("sort_reverse").is_some_and(|v| v == "true"),
            columns,
        }))
    }

    fn apply(&self, value: Value) -> Result<Value, ApiError> {
        let mut items = match value {
            Value::Array(items) => items,
            object => return Ok(self.select(object)),
        };
        let total = items.len();
        if let Some(filter) = &self.name {
            items.retain(|item| filter.keeps(item));
        }
        if let Some(path) = &self.sort {
            items.sort_by(|a, b| compare(lookup(a, path), lookup(b, path)));
        }
        if self.sort_reverse {
            items.reverse();
        }
        let Some((page, size)) = self.page else {
            return Ok(Value::Array(
                items.into_iter().map(|i| self.select(i)).collect(),
            ));
        };
        let filtered = items.len();
        let page_count = filtered.div_ceil(size);
        if page > page_count.max(1) {
            return Err(ApiError::bad_request("page out of range"));
        }
        let items: Vec<Value> = items
            .into_iter()
            .skip((page - 1) * size)
            .take(size)
            .map(|i| self.select(i))
            .collect();
        Ok(json!({
            "filtered_count": filtered,
            "item_count": items.len(),
            "items": items,
            "page": page,
            "page_count": page_count,
            "page_size": size,
            "total_count": total,
        }))
    }

    /// Keeps only the requested columns of one item (all of it without `columns`).
    fn select(&self, item: Value) -> Value {
        let (Some(columns), Value::Object(_)) = (&self.columns, &item) else {
            return item;
        };
        let mut out = Map::new();
        for path in columns {
            if let Some(v) = lookup(&item, path) {
                insert(&mut out, path, v.clone());
            }
        }
        Value::Object(out)
    }
}

fn lookup<'a>(item: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(item, |v, key| v.get(key))
}

fn insert(out: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = out;
    for key in parents {
        let next = at
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(map) = next else {
            return;
        };
        at = map;
    }
    at.insert(last.clone(), value);
}

/// Sort order: missing and null first, then booleans, numbers, strings (ignoring case, then
/// exactly), and anything else last in the order it came.
fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(v: Option<&Value>) -> u8 {
        match v {
            None | Some(Value::Null) => 0,
            Some(Value::Bool(_)) => 1,
            Some(Value::Number(_)) => 2,
            Some(Value::String(_)) => 3,
            Some(_) => 4,
        }
    }
    match (a, b) {
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.total_cmp(&y)
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x
            .to_lowercase()
            .cmp(&y.to_lowercase())
            .then_with(|| x.cmp(y)),
        _ => rank(a).cmp(&rank(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(query: &[(&str, &str)]) -> ListParams {
        let query = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ListParams::parse(&query)
            .expect("valid parameters")
            .expect("some parameters")
    }

    fn queues() -> Value {
        json!([
            {"name": "b", "messages": 3, "message_stats": {"publish": 10}},
            {"name": "A", "messages": 1, "message_stats": {"publish": 30}},
            {"name": "c", "messages": 2},
        ])
    }

    #[test]
    fn no_list_parameter_means_untouched() {
        let query = [("other".to_owned(), "1".to_owned())].into_iter().collect();
        assert!(ListParams::parse(&query).expect("parse").is_none());
    }

    #[test]
    fn sorts_by_a_dotted_field_and_reverses() {
        let out = params(&[("sort", "message_stats.publish"), ("sort_reverse", "true")])
            .apply(queues())
            .expect("apply");
        let names: Vec<_> = out
            .as_array()
            .expect("list")
            .iter()
            .map(|q| q["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["A", "b", "c"]);
        let out = params(&[("sort", "name")]).apply(queues()).expect("apply");
        assert_eq!(out[0]["name"], "A");
        assert_eq!(out[2]["name"], "c");
    }

    #[test]
    fn columns_keep_nested_fields() {
        let out = params(&[("columns", "name,message_stats.publish")])
            .apply(queues())
            .expect("apply");
        assert_eq!(
            out[0],
            json!({"name": "b", "message_stats": {"publish": 10}})
        );
        assert_eq!(out[2], json!({"name": "c"}));
    }

    #[test]
    fn pages_with_counts_and_name_filters() {
        let out = params(&[("page", "2"), ("page_size", "1"), ("name", "a")])
            .apply(json!([{"name": "a1"}, {"name": "xA2"}, {"name": "b"}]))
            .expect("apply");
        assert_eq!(
            out,
            json!({"filtered_count": 2, "item_count": 1, "items": [{"name": "xA2"}],
                   "page": 2, "page_count": 2, "page_size": 1, "total_count": 3})
        );
        let out = params(&[("page", "1"), ("name", "^a"), ("use_regex", "true")])
            .apply(json!([{"name": "a1"}, {"name": "xA2"}, {"name": "A3"}]))
            .expect("apply");
        assert_eq!(out["items"], json!([{"name": "a1"}, {"name": "A3"}]));
        assert_eq!(out["page_size"], 100);
    }

    #[test]
    fn bad_pages_are_refused() {
        for query in [
            vec![("page", "0")],
            vec![("page", "x")],
            vec![("page", "1"), ("page_size", "501")],
            vec![("page", "1"), ("name", "("), ("use_regex", "true")],
        ] {
            let query = query
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            assert!(ListParams::parse(&query).is_err(), "{query:?}");
        }
        let err = params(&[("page", "3"), ("page_size", "2")]).apply(queues());
        assert!(err.is_err());
        let empty = params(&[("page", "1")]).apply(json!([])).expect("apply");
        assert_eq!(empty["page_count"], 0);
    }
}
