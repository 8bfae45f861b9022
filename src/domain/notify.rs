//! Writing the outcome back to the ticket the offboard came from: a Jira
//! comment, a ServiceNow work note, a PagerDuty incident note. A source
//! says which (`"notify"`); the secret holds the credentials
//! (`jira_api`, `servicenow_api`, `pagerduty_api`), and without them
//! nothing is written. A write-back never changes a device's outcome.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::support::json_pointer::{Pointer, scalar_text};
use crate::support::redacted::Redacted;

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

/// `jira_api`, `servicenow_api` and `pagerduty_api` from the secret. Each
/// is `None` when absent, `Some(Err)` when present but unusable (reported
/// at write-back time, so a typo there never stops offboards).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct WriteBackCreds {
    pub jira: Option<Result<BasicApi, String>>,
    pub servicenow: Option<Result<BasicApi, String>>,
    pub pagerduty: Option<Result<TokenApi, String>>,
}

impl fmt::Debug for WriteBackCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBackCreds")
            .field("jira", &self.jira.is_some())
            .field("servicenow", &self.servicenow.is_some())
            .field("pagerduty", &self.pagerduty.is_some())
            .finish()
    }
}

/// A base URL and basic-auth credentials (Jira: email and API token;
/// ServiceNow: user and password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicApi {
    pub base_url: String,
    pub user: String,
    pub password: Redacted<String>,
}

/// PagerDuty's REST API key and the `From` user's email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenApi {
    pub base_url: String,
    pub token: Redacted<String>,
    pub from: String,
}

pub const PAGERDUTY_API: &str = "https://api.pagerduty.com";

fn base_url(key: &str, v: Option<&str>) -> Result<String, String> {
    let v = v.ok_or(format!("the secret's '{key}' has no base_url"))?;
    let url = reqwest::Url::parse(v.trim())
        .map_err(|_| format!("the secret's '{key}.base_url' is not a URL"))?;
    if !crate::support::url_policy::is_https_or_loopback(&url) {
        return Err(format!("the secret's '{key}.base_url' must be https://"));
    }
    Ok(v.trim().trim_end_matches('/').to_string())
}

impl WriteBackCreds {
    pub fn from_secret(obj: &Map<String, Value>) -> Self {
        let text = |key: &str, o: &Map<String, Value>, k: &str| -> Result<String, String> {
            o.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().to_string())
                .ok_or(format!("the secret's '{key}' has no '{k}'"))
        };
        let basic = |key: &str, user: &str, password: &str| {
            obj.get(key).map(|v| {
                let o = v
                    .as_object()
                    .ok_or(format!("the secret's '{key}' must be an object"))?;
                Ok(BasicApi {
                    base_url: base_url(key, o.get("base_url").and_then(Value::as_str))?,
                    user: text(key, o, user)?,
                    password: Redacted(text(key, o, password)?),
                })
            })
        };
        let pagerduty = obj.get("pagerduty_api").map(|v| {
            let key = "pagerduty_api";
            let o = v
                .as_object()
                .ok_or(format!("the secret's '{key}' must be an object"))?;
            Ok(TokenApi {
                base_url: match o.get("base_url").and_then(Value::as_str) {
                    None => PAGERDUTY_API.to_string(),
                    some => base_url(key, some)?,
                },
                token: Redacted(text(key, o, "token")?),
                from: text(key, o, "from")?,
            })
        });
        Self {
            jira: basic("jira_api", "email", "api_token"),
            servicenow: basic("servicenow_api", "user", "password"),
            pagerduty,
        }
    }
}

/// The note text, the same words in each system.
pub fn note_text(
    device: &str,
    machine_id: &str,
    action_id: &str,
    status: &str,
    detail: &str,
    finished_at: &str,
) -> String {
    let mut s = format!(
        "mde-offboard: the offboard of {device} (Defender machine {machine_id}) ended {status} at {finished_at}; Defender action {action_id}."
    );
    if !detail.is_empty() {
        s.push(' ');
        s.push_str(detail);
        if !detail.ends_with('.') {
            s.push('.');
        }
    }
    s
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

    #[test]
    fn credentials_are_read_only_when_whole_and_never_printed() {
        let obj = json!({
            "jira_api": {"base_url": "https://contoso.atlassian.net/", "email": "a@b.c", "api_token": "tok-secret"},
            "servicenow_api": {"base_url": "http://evil.example.com", "user": "u", "password": "p"},
            "pagerduty_api": {"token": "pd-secret"}
        });
        let c = WriteBackCreds::from_secret(obj.as_object().unwrap());
        let jira = c.jira.clone().unwrap().unwrap();
        assert_eq!(jira.base_url, "https://contoso.atlassian.net");
        assert!(
            c.servicenow.clone().unwrap().is_err(),
            "plain http off loopback"
        );
        let pd = c.pagerduty.clone().unwrap().unwrap_err();
        assert!(pd.contains("'from'"), "{pd}");
        let printed = format!("{c:?}");
        assert!(!printed.contains("tok-secret") && !printed.contains("pd-secret"));
        assert!(WriteBackCreds::from_secret(&Map::new()).jira.is_none());
    }
}
