//! Request decoding: the JSON body (content type, 1 MiB cap before reading it whole, syntax,
//! I-JSON numbers, an object at the top), the actor (the authenticated token's name; a body
//! `actor` or `X-Actor` that names someone else is 403 `actor_mismatch`), typed fields
//! with exact 400s, and path and query parameters that answer in the contract's error shape.

use super::auth::Principal;
use super::error::ApiError;
use crate::engine::jcs;
use crate::model::is_valid_id;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A decoded JSON object body with its actor already resolved (the token's name). Fields are
/// taken one by one; what is left at `finish` is an unknown field.
pub struct Body {
    pub actor: String,
    fields: Map<String, Value>,
    /// The request's `Idempotency-Key`, if it sent one.
    pub idempotency: Option<Idempotency>,
}

/// An `Idempotency-Key` and what it was first used for: the same key with the same request
/// replays the first answer; with another request it is refused.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub actor: String,
    pub key: String,
    /// `H({"method", "path", "body"})` of the request as sent.
    pub request_hash: String,
}

/// The deepest nesting a body may have. The engine wraps inputs in a few levels (the evaluation
/// context, refusal evidence) before storing them, and every stored blob must parse back within
/// serde_json's limit of 128 when `verify` reads it, so bodies stop well short of that.
pub const MAX_BODY_DEPTH: usize = 64;

/// The longest `Idempotency-Key` accepted.
const MAX_KEY_BYTES: usize = 255;

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Body, ApiError> {
        let (parts, body) = req.into_parts();
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        if !media_type.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("Content-Type must be application/json, not {content_type:?}"),
            ));
        }
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body exceeds {MAX_BODY_BYTES} bytes"),
            )
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|e| {
                if std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                {
                    too_large()
                } else {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "malformed_json",
                        format!("could not read the body: {e}"),
                    )
                }
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "the body is empty; a JSON object is required",
            ));
        }
        let mut value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("malformed JSON: {e}"),
            )
        })?;
        jcs::admit(&mut value)
            .map_err(|e| ApiError::bad_request("number_out_of_range", &e.path, e.to_string()))?;
        // I-JSON (RFC 7493 §2.3): member names are unique. A parser that kept the first of two
        // would read another request than the one hashed and stored, so both are refused.
        if let Some((path, message)) = duplicate_member(&bytes) {
            return Err(ApiError::bad_request("duplicate_key", &path, message));
        }
        if depth(&value) > MAX_BODY_DEPTH {
            return Err(ApiError::bad_request(
                "too_deep",
                "",
                format!("the body nests deeper than {MAX_BODY_DEPTH} levels"),
            ));
        }
        let idempotency_key = idempotency_key(&parts.headers)?;
        let request_hash = match &idempotency_key {
            Some(_) => {
                // Without `actor`: it may only name the token's holder (else 403, nothing
                // written), as `X-Actor` may, so a retry that states it or not asks the same.
                let mut body = value.clone();
                if let Value::Object(fields) = &mut body {
                    fields.remove("actor");
                }
                let request = serde_json::json!({"method": parts.method.as_str(), "path": parts.uri.path(), "body": body});
                Some(jcs::hash(&request).map_err(ApiError::internal)?)
            }
            None => None,
        };
        let Value::Object(mut fields) = value else {
            return Err(ApiError::bad_request(
                "wrong_type",
                "",
                "the body must be a JSON object",
            ));
        };
        let principal = parts
            .extensions
            .get::<Principal>()
            .ok_or_else(|| ApiError::internal("a body behind authentication has no principal"))?;
        let stated = match fields.remove("actor") {
            Some(Value::String(actor)) => Some(actor),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "wrong_type",
                    "actor",
                    "actor must be a string",
                ))
            }
            None => None,
        };
        let header = match parts.headers.get("x-actor") {
            Some(v) => Some(v.to_str().map(str::to_string).map_err(|_| {
                ApiError::bad_request("missing_actor", "actor", "X-Actor must be plain text")
            })?),
            None => None,
        };
        // The actor is the token's name. A request may still name it (older clients do); a name
        // that is not the token's is refused rather than ignored.
        for actor in stated.iter().chain(header.iter()) {
            if !is_valid_id(actor) {
                return Err(ApiError::bad_request(
                    "missing_actor",
                    "actor",
                    "actor must be 1-128 letters, digits or ._:@-",
                ));
            }
            if *actor != principal.name {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "actor_mismatch",
                    format!(
                        "the request names actor {actor:?} but its token is {:?}'s",
                        principal.name
                    ),
                ));
            }
        }
        let actor = principal.name.clone();
        let idempotency = idempotency_key
            .zip(request_hash)
            .map(|(key, request_hash)| Idempotency {
                actor: actor.clone(),
                key,
                request_hash,
            });
        Ok(Body {
            actor,
            fields,
            idempotency,
        })
    }
}

/// Where a value lies in the document, as a chain to the root, so that nothing is allocated
/// unless a duplicate is found: `input.items[2].amount`, as `jcs::admit` writes paths.
enum Place<'a> {
    Root,
    Member(&'a Place<'a>, &'a str),
    Item(&'a Place<'a>, usize),
}

impl Place<'_> {
    fn path(&self) -> String {
        match self {
            Place::Root => String::new(),
            Place::Member(parent, name) => match parent.path() {
                path if path.is_empty() => (*name).to_string(),
                path => format!("{path}.{name}"),
            },
            Place::Item(parent, index) => format!("{}[{index}]", parent.path()),
        }
    }
}

/// Reads a JSON document only to refuse an object that names a member twice; the path of the
/// second one is left in `found`.
struct UniqueKeys<'a> {
    place: &'a Place<'a>,
    found: &'a std::cell::RefCell<Option<String>>,
}

impl<'de> serde::de::DeserializeSeed<'de> for UniqueKeys<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        for index in 0.. {
            let place = Place::Item(self.place, index);
            let seed = UniqueKeys {
                place: &place,
                found: self.found,
            };
            if items.next_element_seed(seed)?.is_none() {
                break;
            }
        }
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut members: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(name) = members.next_key::<String>()? {
            let place = Place::Member(self.place, &name);
            if seen.contains(&name) {
                let path = place.path();
                let message = format!("the member {path:?} appears twice");
                *self.found.borrow_mut() = Some(path);
                return Err(serde::de::Error::custom(message));
            }
            members.next_value_seed(UniqueKeys {
                place: &place,
                found: self.found,
            })?;
            seen.insert(name);
        }
        Ok(())
    }
}

/// The path of a member named twice in `bytes` (a JSON document already parsed once), if any,
/// with the parser's message.
fn duplicate_member(bytes: &[u8]) -> Option<(String, String)> {
    use serde::de::DeserializeSeed;
    let found = std::cell::RefCell::new(None);
    let seed = UniqueKeys {
        place: &Place::Root,
        found: &found,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let error = seed.deserialize(&mut deserializer).err()?;
    Some((found.into_inner().unwrap_or_default(), error.to_string()))
}

/// How deeply `value` nests: 1 for a scalar, one more for each array or object around it.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 1,
    }
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        // Which one would a retry send? Neither may be silently ignored.
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key",
            "Idempotency-Key is given more than once; send one",
        ));
    }
    match value.to_str() {
        Ok(key)
            if !key.is_empty()
                && key.len() <= MAX_KEY_BYTES
                && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(key.to_string()))
        }
        _ => Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key",
            format!("Idempotency-Key must be 1 to {MAX_KEY_BYTES} visible ASCII characters"),
        )),
    }
}

impl Body {
    fn wrong_type(name: &str, expected: &str) -> ApiError {
        ApiError::bad_request("wrong_type", name, format!("{name} must be {expected}"))
    }

    pub fn required_str(&mut self, name: &str) -> Result<String, ApiError> {
        match self.fields.remove(name) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(Body::wrong_type(name, "a string")),
            None => Err(ApiError::bad_request(
                "missing_field",
                name,
                format!("{name} is required"),
            )),
        }
    }

    /// An optional string; `null` counts as absent.
    pub fn optional_str(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.fields.remove(name) {
            Some(Value::String(s)) => Ok(Some(s)),
            None | Some(Value::Null) => Ok(None),
            Some(_) => Err(Body::wrong_type(name, "a string")),
        }
    }

    /// An optional integer; `null` counts as absent.
    pub fn optional_i64(&mut self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.fields.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| Body::wrong_type(name, "an integer")),
            Some(_) => Err(Body::wrong_type(name, "an integer")),
        }
    }

    /// Any JSON value; absent is `null` (contract §5: "an absent input is null").
    pub fn value_or_null(&mut self, name: &str) -> Value {
        self.fields.remove(name).unwrap_or(Value::Null)
    }

    /// Any JSON value, `null` included when it is sent; absent is 400 `missing_field`.
    pub fn required_value(&mut self, name: &str) -> Result<Value, ApiError> {
        self.fields.remove(name).ok_or_else(|| {
            ApiError::bad_request("missing_field", name, format!("{name} is required"))
        })
    }

    /// A JSON object; absent is 400 `missing_field`, anything else 400 `wrong_type`.
    pub fn required_object(&mut self, name: &str) -> Result<Value, ApiError> {
        match self.required_value(name)? {
            object @ Value::Object(_) => Ok(object),
            _ => Err(Body::wrong_type(name, "a JSON object")),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.fields.contains_key(name)
    }

    /// Refuses whatever field was not taken.
    pub fn finish(self) -> Result<String, ApiError> {
        match self.fields.keys().next() {
            Some(field) => Err(ApiError::bad_request(
                "unknown_field",
                field,
                format!("unknown field {field:?}"),
            )),
            None => Ok(self.actor),
        }
    }

    /// The remaining fields as a document (policies, definitions, agents), the actor, and the
    /// idempotency key.
    pub fn into_document(self) -> (Map<String, Value>, String, Option<Idempotency>) {
        (self.fields, self.actor, self.idempotency)
    }
}

/// Path parameters; a path that cannot be decoded is a 404 like any unknown route.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(t)) => Ok(Params(t)),
            Err(e) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("bad path: {e}"),
            )),
        }
    }
}

/// The query string as decoded pairs; unknown or repeated keys are refused by the caller.
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = form_pairs(query).map_err(|why| {
            ApiError::bad_request(
                "invalid_query",
                "",
                format!("malformed query string: {why}"),
            )
        })?;
        Ok(QueryPairs(pairs))
    }
}

impl QueryPairs {
    /// Takes the allowed keys; anything else is a 400.
    pub fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.0.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            Some((k, _)) => Err(ApiError::bad_request(
                "invalid_query",
                k,
                format!("unknown query parameter {k:?}"),
            )),
            None => Ok(()),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request("invalid_query", key, format!("{key} must be an integer"))
                })
            })
            .transpose()
    }
}

/// Decodes `application/x-www-form-urlencoded` pairs (`+` is a space, `%XX` a byte).
fn form_pairs(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or("truncated %-escape")?;
                let hex = std::str::from_utf8(hex).map_err(|_| "bad %-escape")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad %-escape")?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "query is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_named_twice_is_found_at_any_depth() {
        let twice = |text: &str| duplicate_member(text.as_bytes()).map(|(path, _)| path);
        assert_eq!(
            twice(r#"{"a": 1, "b": [1.5, 12345678901234567890, {"a": 2}], "c": null}"#),
            None
        );
        assert_eq!(twice(r#"{"a": 1, "a": 2}"#).as_deref(), Some("a"));
        assert_eq!(
            twice(r#"{"x": [{"k": true, "k": false}]}"#).as_deref(),
            Some("x[0].k")
        );
        assert_eq!(
            twice(r#"{"a": 1, "\u0061": 2}"#).as_deref(),
            Some("a"),
            "escapes name the same member"
        );
    }

    #[test]
    fn depth_counts_every_level_of_nesting() {
        assert_eq!(depth(&serde_json::json!(1)), 1);
        assert_eq!(depth(&serde_json::json!({"a": [1, {"b": []}]})), 4);
    }

    #[test]
    fn query_strings_decode_plus_and_percent_escapes() {
        let pairs = form_pairs("status=RUNNING&workflow_id=a%2Fb+c&limit=5").unwrap();
        assert_eq!(pairs[1], ("workflow_id".to_string(), "a/b c".to_string()));
        assert!(form_pairs("x=%zz").is_err());
        assert!(form_pairs("x=%2").is_err());
    }
}
