//! RFC 6901 JSON Pointers, with two extensions that apply only to arrays (on
//! an object a token is always a key): `*` for every element, and
//! `[key=value]` for the elements that are objects whose `key` is `value`.

use serde::Deserialize;
use serde_json::Value;

/// An RFC 6901 pointer, parsed once.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Pointer {
    raw: String,
    pub(crate) tokens: Vec<String>,
}

impl Pointer {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Ok(Self {
                raw: String::new(),
                tokens: Vec::new(),
            });
        }
        let rest = raw
            .strip_prefix('/')
            .ok_or_else(|| format!("'{raw}' is not a JSON Pointer (it must start with '/')"))?;
        let tokens = rest
            .split('/')
            .map(|t| unescape(t).ok_or_else(|| format!("'{raw}' has a '~' not followed by 0 or 1")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            raw: raw.to_string(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Every value the pointer reaches; more than one only through `*`.
    pub fn resolve_all<'v>(&self, doc: &'v Value) -> Vec<&'v Value> {
        let mut current = vec![doc];
        for token in &self.tokens {
            let mut next = Vec::new();
            for v in current {
                match v {
                    Value::Object(m) => next.extend(m.get(token)),
                    Value::Array(items) if token == "*" => next.extend(items.iter()),
                    Value::Array(items) => match selector(token) {
                        Some((key, want)) => next.extend(
                            items
                                .iter()
                                .filter(|i| i.get(key).and_then(Value::as_str) == Some(want)),
                        ),
                        None => next.extend(array_index(token).and_then(|i| items.get(i))),
                    },
                    _ => {}
                }
            }
            current = next;
        }
        current
    }

    pub fn resolve<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        self.resolve_all(doc).into_iter().next()
    }

    /// The one value a plain pointer (no `*` or `[key=value]`) reaches.
    pub fn resolve_mut<'v>(&self, doc: &'v mut Value) -> Option<&'v mut Value> {
        self.tokens.iter().try_fold(doc, |v, token| match v {
            Value::Object(m) => m.get_mut(token),
            Value::Array(items) => array_index(token).and_then(|i| items.get_mut(i)),
            _ => None,
        })
    }
}

impl TryFrom<String> for Pointer {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        Self::parse(&raw)
    }
}

/// `[key=value]`, split.
fn selector(token: &str) -> Option<(&str, &str)> {
    token.strip_prefix('[')?.strip_suffix(']')?.split_once('=')
}

/// `~1` is `/` and `~0` is `~`, decoded in that order (RFC 6901 §4); any
/// other `~` is an error.
fn unescape(token: &str) -> Option<String> {
    let escapes_ok = token.split('~').skip(1).all(|s| s.starts_with(['0', '1']));
    escapes_ok.then(|| token.replace("~1", "/").replace("~0", "~"))
}

/// RFC 6901 array indexes: digits, no leading zero.
fn array_index(token: &str) -> Option<usize> {
    let canonical = token == "0" || !token.starts_with('0');
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    (canonical && digits).then(|| token.parse().ok()).flatten()
}

/// A scalar as text: strings as they are, numbers and booleans printed.
/// Objects, arrays and null have no text.
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
