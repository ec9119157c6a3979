//! Request plumbing shared by the emulator's route modules: the bearer check, query parameters (repeated keys kept),
//! JSON body accessors with Valiqor-style 400s, and paging.

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use http::{HeaderMap, header::AUTHORIZATION};
use serde_json::{Map, Value};

use super::{App, error::EmuError};

/// The bearer key of an authenticated request (inserted by [`require_bearer`]).
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) String);

/// The token of an `Authorization: Bearer …` header, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Route layer: only the configured key (or, without one, any `vq_` key) passes; everything else is a 401.
pub(crate) async fn require_bearer(
    State(app): State<App>,
    mut req: Request,
    next: Next,
) -> Result<Response, EmuError> {
    let key = bearer(req.headers()).ok_or(EmuError::Unauthorized)?;
    let accepted = match &app.settings.api_key {
        Some(expected) => key == expected,
        None => key.starts_with("vq_"),
    };
    if !accepted {
        return Err(EmuError::Unauthorized);
    }
    let caller = Caller(key.to_owned());
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

// === query parameters ===

/// Decoded query parameters in order; repeated keys are kept.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        Self(
            raw.map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        )
    }

    /// The first value of `key`, if present and non-empty.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, each also split on commas (`a&b` and `a,b` both work).
    pub(crate) fn list(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// An integer parameter with a default, validated into `min..=max` (FastAPI-style 422 otherwise).
    pub(crate) fn int(
        &self,
        key: &'static str,
        default: usize,
        min: usize,
        max: usize,
    ) -> Result<usize, EmuError> {
        let Some(raw) = self.get(key) else {
            return Ok(default);
        };
        match raw.parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(EmuError::InvalidQuery {
                param: key,
                value: raw.to_owned(),
                expected: "int",
            }),
        }
    }

    pub(crate) fn float(&self, key: &'static str) -> Result<Option<f64>, EmuError> {
        self.get(key)
            .map(|raw| {
                raw.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| EmuError::InvalidQuery {
                        param: key,
                        value: raw.to_owned(),
                        expected: "float",
                    })
            })
            .transpose()
    }

    pub(crate) fn paging(&self, default_size: usize) -> Result<Paging, EmuError> {
        Ok(Paging {
            page: self.int("page", 1, 1, 1_000_000)?,
            page_size: self.int("page_size", default_size, 1, 1000)?,
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Paging {
    pub(crate) page: usize,
    pub(crate) page_size: usize,
}

impl Paging {
    pub(crate) fn slice<'a, T>(&self, items: &'a [T]) -> &'a [T] {
        let start = (self.page - 1)
            .saturating_mul(self.page_size)
            .min(items.len());
        let end = start.saturating_add(self.page_size).min(items.len());
        &items[start..end]
    }

    pub(crate) fn has_more(&self, total: usize) -> bool {
        self.page.saturating_mul(self.page_size) < total
    }
}

// === JSON bodies ===

pub(crate) type Object = Map<String, Value>;

/// The body as a JSON object, or a 400 `{"detail": …}`.
pub(crate) fn json_object(body: &[u8]) -> Result<Object, EmuError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(EmuError::BadRequest(
            "Request body must be a JSON object".to_owned(),
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(EmuError::BadRequest(
            "Request body must be a JSON object".to_owned(),
        )),
        Err(e) => Err(EmuError::BadRequest(format!("Invalid JSON body: {e}"))),
    }
}

/// The body as a JSON object, treating an empty body as `{}` (endpoints whose body is optional).
pub(crate) fn optional_object(body: &[u8]) -> Result<Object, EmuError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(Object::new())
    } else {
        json_object(body)
    }
}

/// An optional string field (`null` counts as absent).
pub(crate) fn opt_str<'a>(obj: &'a Object, key: &str) -> Result<Option<&'a str>, EmuError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(EmuError::BadRequest(format!("'{key}' must be a string"))),
    }
}

/// A required, non-empty string field.
pub(crate) fn req_str<'a>(obj: &'a Object, key: &str) -> Result<&'a str, EmuError> {
    opt_str(obj, key)?
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| EmuError::BadRequest(format!("'{key}' is required")))
}

pub(crate) fn opt_bool(obj: &Object, key: &str, default: bool) -> Result<bool, EmuError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(EmuError::BadRequest(format!("'{key}' must be a boolean"))),
    }
}

pub(crate) fn opt_f64(obj: &Object, key: &str) -> Result<Option<f64>, EmuError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(EmuError::BadRequest(format!("'{key}' must be a number"))),
    }
}

/// An optional list of strings.
pub(crate) fn opt_str_list(obj: &Object, key: &str) -> Result<Option<Vec<String>>, EmuError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(EmuError::BadRequest(format!(
                    "'{key}' must be a list of strings"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(EmuError::BadRequest(format!(
            "'{key}' must be a list of strings"
        ))),
    }
}

/// The `dataset` field: absent → `None`; otherwise a list of objects within `max` items
/// (more → 400 `dataset_too_large`; the size check comes first, as the real service does it before parsing items).
pub(crate) fn dataset(obj: &Object, max: usize) -> Result<Option<&[Value]>, EmuError> {
    let items = match obj.get("dataset") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(EmuError::BadRequest("'dataset' must be a list".to_owned())),
    };
    if items.len() > max {
        return Err(EmuError::DatasetTooLarge {
            size: items.len(),
            max,
        });
    }
    if let Some(i) = items.iter().position(|v| !v.is_object()) {
        return Err(EmuError::BadRequest(format!(
            "dataset[{i}] must be an object"
        )));
    }
    Ok(Some(items))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn params_keep_repeated_and_comma_joined_values() {
        let p = Params::parse(Some("run_ids=a&run_ids=b%2Cc&empty=&page=2"));
        assert_eq!(p.list("run_ids"), ["a", "b", "c"]);
        assert_eq!(p.get("empty"), None);
        assert_eq!(p.int("page", 1, 1, 10).unwrap(), 2);
        assert!(matches!(
            p.int("page", 1, 3, 10),
            Err(EmuError::InvalidQuery { param: "page", .. })
        ));
    }

    #[test]
    fn paging_slices_and_reports_more() {
        let items: Vec<u32> = (0..5).collect();
        let page = Paging {
            page: 2,
            page_size: 2,
        };
        assert_eq!(page.slice(&items), [2, 3]);
        assert!(page.has_more(items.len()));
        let last = Paging {
            page: 3,
            page_size: 2,
        };
        assert_eq!(last.slice(&items), [4]);
        assert!(!last.has_more(items.len()));
        assert!(
            Paging {
                page: 9,
                page_size: 2
            }
            .slice(&items)
            .is_empty()
        );
    }

    #[test]
    fn dataset_size_is_checked_before_the_items() {
        let obj = json_object(br#"{"dataset": [1, 2, 3]}"#).unwrap();
        assert!(matches!(
            dataset(&obj, 2),
            Err(EmuError::DatasetTooLarge { size: 3, max: 2 })
        ));
        assert!(matches!(dataset(&obj, 5), Err(EmuError::BadRequest(_))));
        let ok = json_object(br#"{"dataset": [{"input": "q"}]}"#).unwrap();
        assert_eq!(dataset(&ok, 5).unwrap().map(<[Value]>::len), Some(1));
        assert!(json_object(b"[1]").is_err());
        assert!(json_object(b"  ").is_err());
        assert_eq!(
            optional_object(b"").unwrap(),
            json!({}).as_object().cloned().unwrap()
        );
    }
}
