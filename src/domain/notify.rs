//! Writing the outcome back to the ticket the offboard came from: a Jira
//! comment, a ServiceNow work note, a PagerDuty incident note. A source
//! says which (`"notify"`); the secret holds the credentials
//! (`jira_api`, `servicenow_api`, `pagerduty_api`), and without them
//! nothing is written. A write-back never changes a device's outcome.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::support::json_pointer::{Pointer, scalar_text};

/// Where one delivery's outcome is written, as the delivery named it.
/// Carried in track messages, so strict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "lowercase", deny_unknown_fields)]
pub enum NotifyTarget {
    Jira { issue: String },
    Servicenow { table: String, sys_id: String },
    Pagerduty { incident: String },
}

fn word(s: &str, max: usize, extra: &[u8]) -> bool {
    (1..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

impl NotifyTarget {
    /// Every value goes into a URL path: only the characters each system
    /// uses in its ids, so none can reach another path.
    pub fn is_valid(&self) -> bool {
        match self {
            Self::Jira { issue } => word(issue, 64, b"-_"),
            Self::Servicenow { table, sys_id } => {
                word(table, 80, b"_")
                    && sys_id.len() == 32
                    && sys_id.bytes().all(|b| b.is_ascii_hexdigit())
            }
            Self::Pagerduty { incident } => word(incident, 64, b""),
        }
    }

    pub fn system(&self) -> &'static str {
        match self {
            Self::Jira { .. } => "jira",
            Self::Servicenow { .. } => "servicenow",
            Self::Pagerduty { .. } => "pagerduty",
        }
    }
}

/// A source's `"notify"`: `"jira"`, `"pagerduty"`, `"servicenow"`, or for
/// ServiceNow `{"to": "servicenow", "sys_id": "<pointer>", "table": "<name>"}`
/// (defaults `/sys_id` and `incident`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "to", rename_all = "lowercase", deny_unknown_fields)]
#[serde(expecting = "jira, servicenow, pagerduty or an object with 'to'")]
pub enum NotifyDef {
    Jira,
    Pagerduty,
    Servicenow {
        #[serde(default = "default_sys_id")]
        sys_id: Pointer,
        #[serde(default = "default_table", deserialize_with = "table")]
        table: String,
    },
}

fn default_sys_id() -> Pointer {
    Pointer::parse("/sys_id").expect("a pointer")
}

fn default_table() -> String {
    "incident".into()
}

fn table<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let table = String::deserialize(d)?;
    match word(&table, 80, b"_") {
        true => Ok(table),
        false => Err(serde::de::Error::custom(format!(
            "table '{table}' is not a table name"
        ))),
    }
}

impl NotifyDef {
    /// A name alone is short for `{"to": <name>}`.
    pub fn parse(v: &Value) -> Result<Self, String> {
        match v {
            Value::String(to) => Self::deserialize(serde_json::json!({ "to": to })),
            _ => Self::deserialize(v),
        }
        .map_err(|e| e.to_string())
    }

    /// The target of one delivery, or `None` when the payload does not
    /// name a valid record (the offboard goes on; nothing is written).
    pub fn target(&self, doc: &Value, ticket: &str) -> Option<NotifyTarget> {
        let t = match self {
            Self::Jira => NotifyTarget::Jira {
                issue: ticket.to_string(),
            },
            Self::Pagerduty => NotifyTarget::Pagerduty {
                incident: ticket.to_string(),
            },
            Self::Servicenow { sys_id, table } => NotifyTarget::Servicenow {
                table: table.clone(),
                sys_id: sys_id.resolve(doc).and_then(scalar_text)?,
            },
        };
        t.is_valid().then_some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targets_take_only_id_characters() {
        let sn = NotifyDef::parse(&json!("servicenow")).unwrap();
        let doc = json!({"sys_id": "9d385017c611228701d22104cc95c371"});
        assert_eq!(
            sn.target(&doc, "INC1"),
            Some(NotifyTarget::Servicenow {
                table: "incident".into(),
                sys_id: "9d385017c611228701d22104cc95c371".into()
            })
        );
        assert_eq!(sn.target(&json!({"sys_id": "../../x"}), "INC1"), None);
        assert_eq!(sn.target(&json!({}), "INC1"), None);
        let jira = NotifyDef::parse(&json!("jira")).unwrap();
        assert!(jira.target(&doc, "IT-42").is_some());
        assert_eq!(jira.target(&doc, "IT-42/../../admin"), None);
        let custom =
            NotifyDef::parse(&json!({"to": "servicenow", "sys_id": "/rec/id", "table": "sc_task"}))
                .unwrap();
        assert_eq!(
            custom.target(
                &json!({"rec": {"id": "9d385017c611228701d22104cc95c371"}}),
                "T"
            ),
            Some(NotifyTarget::Servicenow {
                table: "sc_task".into(),
                sys_id: "9d385017c611228701d22104cc95c371".into()
            })
        );
        for bad in [
            json!("slack"),
            json!(3),
            json!({"to": "servicenow", "tabel": "x"}),
            json!({"to": "servicenow", "table": "a/b"}),
        ] {
            assert!(NotifyDef::parse(&bad).is_err(), "{bad}");
        }
    }
}
