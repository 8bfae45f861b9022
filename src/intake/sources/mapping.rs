//! Mapping: a payload, a source's conditions and pointers in, an
//! `OffboardRequest` (or the reason to ignore the event) out.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;

use super::SourceDef;
use crate::domain::model::{Comment, Device, FieldError, Mode, OffboardRequest, Ticket};
use crate::support::json_pointer::{Pointer, scalar_text};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Condition {
    /// One pointer, or several where the field may stand (any of them).
    #[serde(deserialize_with = "crate::support::config_de::one_or_many")]
    pub pointer: Vec<Pointer>,
    #[serde(rename = "in", deserialize_with = "super::texts")]
    pub one_of: Vec<String>,
}

/// What a payload maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    Act(OffboardRequest),
    Ignored { reason: String },
}

impl SourceDef {
    /// Maps a payload. Errors are 422s that name the pointer at fault.
    pub fn map(&self, doc: &Value) -> Result<Mapped, FieldError> {
        for c in &self.when {
            let found: Vec<String> = c
                .pointer
                .iter()
                .flat_map(|p| p.resolve_all(doc))
                .filter_map(scalar_text)
                .collect();
            if !found.iter().any(|v| c.one_of.contains(v)) {
                let seen = match found.first() {
                    Some(v) => format!("is '{}'", v.chars().take(100).collect::<String>()),
                    None => "is absent".to_string(),
                };
                return Ok(Mapped::Ignored {
                    reason: format!(
                        "{} {seen}, not one of {}",
                        c.pointer
                            .iter()
                            .map(Pointer::as_str)
                            .collect::<Vec<_>>()
                            .join(" or "),
                        c.one_of
                            .iter()
                            .map(|s| format!("'{s}'"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        let ticket_field = self
            .ticket
            .iter()
            .map(Pointer::as_str)
            .collect::<Vec<_>>()
            .join(" or ");
        let ticket_text = self
            .ticket
            .iter()
            .find_map(|p| {
                p.resolve(doc)
                    .and_then(scalar_text)
                    .filter(|t| !t.trim().is_empty())
            })
            .ok_or_else(|| {
                FieldError::bounds(
                    &ticket_field,
                    "must hold the ticket (a string or a number), but the payload has none there",
                )
            })?;
        let ticket = Ticket::parse(&ticket_field, &ticket_text)?;

        let mut devices: Vec<Device> = Vec::new();
        let mut seen = HashSet::new();
        for p in &self.devices {
            for v in p.resolve_all(doc) {
                let strings: Vec<&str> = match v {
                    // An object is a reference field (ServiceNow's
                    // `{link, value}`); its text is reached by a deeper
                    // pointer, and an object names no device by itself.
                    Value::Null | Value::Object(_) => Vec::new(),
                    Value::String(s) => vec![s.as_str()],
                    Value::Array(items) => items
                        .iter()
                        .map(|i| match i {
                            Value::String(s) => Ok(s.as_str()),
                            Value::Array(_) => Err(FieldError::bounds(
                                p.as_str(),
                                "holds nested arrays; devices must be a string or an array of strings",
                            )),
                            _ => Err(FieldError::bounds(
                                p.as_str(),
                                "holds an array with a value that is not a string",
                            )),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => {
                        return Err(FieldError::bounds(
                            p.as_str(),
                            "must be a string or an array of strings",
                        ));
                    }
                };
                for s in strings.into_iter().filter(|s| !s.trim().is_empty()) {
                    let d = Device::parse(p.as_str(), s)?;
                    if seen.insert(d.target.key()) {
                        devices.push(d);
                    }
                }
            }
        }
        if devices.is_empty() {
            let field = self.devices.iter().map(Pointer::as_str).collect::<Vec<_>>();
            return Err(FieldError::bounds(
                field.join(", "),
                "must name at least one device, but the payload has none there",
            ));
        }
        let rendered = self.comment.render(ticket.as_str(), doc);
        let comment = Comment::sanitize(&rendered).unwrap_or_else(|| {
            Comment::sanitize(&format!("Offboarded by the '{}' webhook source", self.name))
                .expect("non-empty text")
        });
        Ok(Mapped::Act(OffboardRequest {
            ticket,
            comment,
            devices,
            dry_run: false,
            mode: Mode::Now,
            tenant: self.tenant.clone(),
        }))
    }
}
