//! Comment templates: `{ticket}` and `{/json/pointer}` are replaced by the
//! values they name.

use serde::Deserialize;
use serde_json::Value;

use crate::support::json_pointer::{Pointer, scalar_text};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Ticket,
    Value(Pointer),
}

/// A comment template: `{ticket}` and `{/json/pointer}` are replaced.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Template(Vec<Part>);

impl TryFrom<String> for Template {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl Template {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            text.push_str(&rest[..open]);
            let after = &rest[open..];
            let Some(close) = after.find('}') else {
                rest = after;
                break;
            };
            let inner = &after[1..close];
            let placeholder = if inner == "ticket" {
                Some(Part::Ticket)
            } else if inner.starts_with('/') {
                Some(Part::Value(Pointer::parse(inner)?))
            } else {
                None
            };
            match placeholder {
                Some(p) => {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                    parts.push(p);
                }
                // Not a placeholder: the braces are text.
                None => text.push_str(&after[..=close]),
            }
            rest = &after[close + 1..];
        }
        text.push_str(rest);
        parts.push(Part::Text(text));
        Ok(Self(parts))
    }

    /// Renders the template; a pointer that reaches nothing renders as
    /// empty text.
    pub fn render(&self, ticket: &str, doc: &Value) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.clone(),
                Part::Ticket => ticket.to_string(),
                Part::Value(ptr) => ptr.resolve(doc).and_then(scalar_text).unwrap_or_default(),
            })
            .collect()
    }
}
