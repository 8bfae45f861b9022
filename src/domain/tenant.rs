//! Tenants (contract, "Tenants"): one deployment serving several Defender
//! tenants. The secret's `tenants` maps a name to its credentials; a
//! request names its tenant, and a caller may act only for the tenants its
//! source allows. Pure: the secret and the request come in as values.

use std::collections::BTreeMap;

use serde_json::Value;

/// A tenant's name as the secret's `tenants` holds it: lowercase letters,
/// digits and `-`, at most 32.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// One tenant's credentials; what it leaves out is the top-level one (one
/// multi-tenant app consented in each tenant serves them all).
#[derive(Clone, PartialEq, Eq)]
pub struct TenantCreds {
    pub tenant_id: String,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

impl std::fmt::Debug for TenantCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantCreds")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The secret's `tenants`: each entry read on its own, so one malformed
/// entry stops only its tenant (its error names `tenants.<name>`).
pub type TenantMap = BTreeMap<String, Result<TenantCreds, String>>;

/// Reads the secret's `tenants` object.
pub fn read_tenants(v: &Value) -> Result<TenantMap, String> {
    let obj = v
        .as_object()
        .ok_or("the secret's key 'tenants' must be an object")?;
    Ok(obj
        .iter()
        .map(|(name, entry)| (name.clone(), read_entry(name, entry)))
        .collect())
}

fn read_entry(name: &str, entry: &Value) -> Result<TenantCreds, String> {
    if !valid_name(name) {
        return Err(format!(
            "the secret's key 'tenants.{name}' is not a tenant name (lowercase letters, digits and '-', at most 32)"
        ));
    }
    let obj = entry
        .as_object()
        .ok_or_else(|| format!("the secret's key 'tenants.{name}' must be an object"))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["tenant_id", "client_id", "client_secret"].contains(&k.as_str()))
    {
        return Err(format!(
            "the secret's key 'tenants.{name}.{k}' is not a known key"
        ));
    }
    let text = |k: &str| match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Some(_) => Err(format!(
            "the secret's key 'tenants.{name}.{k}' must be a non-empty string"
        )),
    };
    Ok(TenantCreds {
        tenant_id: text("tenant_id")?
            .ok_or_else(|| format!("the secret has no key 'tenants.{name}.tenant_id'"))?,
        client_id: text("client_id")?,
        client_secret: text("client_secret")?,
    })
}

/// The tenants a caller may act for: every one, or those its source lists.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TenantAllow {
    #[default]
    All,
    Only(Vec<String>),
}

impl TenantAllow {
    pub fn allows(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(list) => list.iter().any(|t| t == name),
        }
    }
}

/// Why a request's tenant is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantRefusal {
    /// 422 `unknown_tenant`: the field names none, or one not served here.
    Unknown { field: String, reason: String },
    /// 403 `tenant_not_allowed`: the caller's source does not allow it.
    NotAllowed(String),
}

/// The tenant a request acts for: `None` where the secret has no
/// `tenants`. With `tenants`, the request must name one of them that its
/// caller may act for; without, it must name none.
pub fn resolve(
    tenants: Option<&TenantMap>,
    named: Option<&str>,
    field: &str,
    allow: &TenantAllow,
) -> Result<Option<String>, TenantRefusal> {
    let unknown = |reason: String| TenantRefusal::Unknown {
        field: field.to_string(),
        reason,
    };
    match (tenants, named) {
        (None, None) => Ok(None),
        (None, Some(n)) => Err(unknown(format!(
            "field '{field}' names the tenant '{n}', but this deployment serves one tenant (the secret has no 'tenants')"
        ))),
        (Some(_), None) => Err(unknown(format!(
            "field '{field}' is required: this deployment serves several tenants; name one"
        ))),
        (Some(map), Some(n)) if !map.contains_key(n) => Err(unknown(format!(
            "field '{field}' names the tenant '{}', which this deployment does not serve",
            printable(n)
        ))),
        (Some(_), Some(n)) if !allow.allows(n) => Err(TenantRefusal::NotAllowed(n.to_string())),
        (Some(_), Some(n)) => Ok(Some(n.to_string())),
    }
}

/// A name echoed in an answer: at most 32 characters of the printable ones.
fn printable(n: &str) -> String {
    n.chars().filter(|c| !c.is_control()).take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map() -> TenantMap {
        read_tenants(&json!({
            "contoso": {"tenant_id": "t1"},
            "fabrikam": {"tenant_id": "t2", "client_id": "c2", "client_secret": "s2"},
            "Broken": {"tenant_id": "t3"},
            "nokey": {"client_id": "c"}
        }))
        .unwrap()
    }

    #[test]
    fn entries_are_read_one_by_one_and_errors_name_the_key() {
        let m = map();
        assert_eq!(m["contoso"].as_ref().unwrap().tenant_id, "t1");
        assert!(m["contoso"].as_ref().unwrap().client_id.is_none());
        assert_eq!(
            m["fabrikam"].as_ref().unwrap().client_id.as_deref(),
            Some("c2")
        );
        assert!(m["Broken"].as_ref().unwrap_err().contains("tenants.Broken"));
        assert!(
            m["nokey"]
                .as_ref()
                .unwrap_err()
                .contains("tenants.nokey.tenant_id")
        );
        assert!(read_tenants(&json!([])).is_err());
    }

    #[test]
    fn a_request_names_a_served_and_allowed_tenant() {
        let m = map();
        let all = TenantAllow::All;
        assert_eq!(resolve(None, None, "tenant", &all), Ok(None));
        assert!(matches!(
            resolve(None, Some("contoso"), "tenant", &all),
            Err(TenantRefusal::Unknown { .. })
        ));
        let Err(TenantRefusal::Unknown { field, reason }) = resolve(Some(&m), None, "tenant", &all)
        else {
            panic!("naming none is refused")
        };
        assert_eq!(field, "tenant");
        assert!(reason.contains("required"), "{reason}");
        assert!(matches!(
            resolve(Some(&m), Some("nope"), "tenant", &all),
            Err(TenantRefusal::Unknown { .. })
        ));
        let only = TenantAllow::Only(vec!["contoso".into()]);
        assert_eq!(
            resolve(Some(&m), Some("fabrikam"), "tenant", &only),
            Err(TenantRefusal::NotAllowed("fabrikam".into()))
        );
        assert_eq!(
            resolve(Some(&m), Some("contoso"), "tenant", &only),
            Ok(Some("contoso".into()))
        );
    }

    #[test]
    fn names_are_lowercase_letters_digits_and_dashes() {
        assert!(valid_name("contoso-eu-2"));
        assert!(!valid_name("Contoso"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(33)));
        assert!(!valid_name("a_b"));
    }
}
