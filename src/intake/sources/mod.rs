//! Webhook sources: how a tool's payload becomes an `OffboardRequest`.
//!
//! A source says how its sender authenticates, when an event should act
//! (`when`), where the ticket and the devices are (RFC 6901 JSON Pointers),
//! and how to write the comment. Definitions are parsed and checked once at
//! init; built-in presets cover Jira, PagerDuty, ServiceNow and Defender XDR
//! or Sentinel incidents, and `SOURCES` replaces the ones it names.
//!
//! Two extensions to RFC 6901, both only on arrays (on an object a token is
//! always a key): `*` stands for every element, so
//! `/alerts/*/evidence/*/mdeDeviceId` collects ids from every alert; and
//! `[key=value]` stands for the elements that are objects whose `key` is
//! `value`, so `/custom_fields/[name=mde_devices]/value` picks one field out
//! of PagerDuty's list of `{name, value}` objects.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::de;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

mod builtin;
mod freshness;
mod mapping;
mod template;

pub use crate::support::json_pointer::{Pointer, scalar_text};
pub use builtin::{EVENTBRIDGE, GENERIC, INVOKE, READER};
pub use freshness::{Freshness, MAX_FUTURE, StaleError, TimeUnit};
pub use mapping::{Condition, Mapped};
pub use template::Template;

use crate::domain::tenant::TenantAllow;
use crate::intake::auth::AuthDef;
use crate::support::config_de::{from_value, non_empty_list, one_or_many};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a source definition object")]
pub struct SourceDef {
    #[serde(skip)]
    pub name: String,
    /// No scheme only on a source that EventBridge alone reaches.
    #[serde(default = "AuthDef::none")]
    pub auth: AuthDef,
    #[serde(default, deserialize_with = "or_default")]
    pub when: Vec<Condition>,
    /// The first pointer that reaches a value is the ticket.
    #[serde(deserialize_with = "one_or_many")]
    pub ticket: Vec<Pointer>,
    #[serde(deserialize_with = "one_or_many")]
    pub devices: Vec<Pointer>,
    #[serde(default = "default_comment")]
    pub comment: Template,
    /// The header that carries the sender's delivery id, for the audit line.
    pub id_header: Option<String>,
    pub freshness: Option<Freshness>,
    /// EventBridge events this source takes (direct invocation).
    pub eventbridge: Option<EventBridgeMatch>,
    /// Where the final outcome is written back (`"notify"`).
    #[serde(default, deserialize_with = "notify")]
    pub notify: Option<crate::domain::notify::NotifyDef>,
    /// The tenant every delivery to this source acts in (with the secret's
    /// `tenants`).
    #[serde(default, deserialize_with = "tenant_name")]
    pub tenant: Option<String>,
}

fn tenant_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let name = Option::<String>::deserialize(d)?;
    match name {
        Some(n) if !crate::domain::tenant::valid_name(&n) => Err(de::Error::custom(
            "must be a tenant name: lowercase letters, digits and '-', at most 32",
        )),
        other => Ok(other),
    }
}

/// Which EventBridge events a source takes: both lists must hold the
/// event's value.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EventBridgeMatch {
    #[serde(deserialize_with = "non_empty_list")]
    pub source: Vec<String>,
    #[serde(rename = "detail-type", deserialize_with = "non_empty_list")]
    pub detail_type: Vec<String>,
}

impl EventBridgeMatch {
    pub fn matches(&self, event: &Value) -> bool {
        let is_in = |list: &[String], key: &str| {
            event
                .get(key)
                .and_then(Value::as_str)
                .is_some_and(|v| list.iter().any(|s| s == v))
        };
        is_in(&self.source, "source") && is_in(&self.detail_type, "detail-type")
    }
}

/// The built-in presets, as `SOURCES` would define them: data, kept in
/// `presets.json` beside this file.
pub const PRESETS: &str = include_str!("presets.json");

/// Every source this instance serves, by name.
#[derive(Debug, Clone)]
pub struct Sources {
    /// `None`: the presets alone (no `SOURCES`), parsed on first use from
    /// one process-wide copy. Parsing them was a quarter of the process's
    /// instructions up to the first `GET next` (callgrind), and they are
    /// compiled in: there is nothing about them init could refuse.
    loaded: Option<Loaded>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Loaded {
    defs: BTreeMap<String, SourceDef>,
    /// The built-in source `generic`: only its auth is configurable.
    generic: AuthDef,
    /// What the read routes accept: `generic`'s auth, or the built-in
    /// source `reader`'s where `SOURCES` gives it one.
    read: AuthDef,
    /// The tenants `generic`'s callers may act for.
    generic_tenants: TenantAllow,
    /// `reader`'s own auth and tenants, where `SOURCES` gives it an auth.
    reader: Option<(AuthDef, TenantAllow)>,
    /// Sources whose definition in `SOURCES` writes a `notify` of its own
    /// (not one inherited from a preset): write-back someone chose.
    chosen_notify: Vec<String>,
}

static PRESETS_ONLY: LazyLock<Loaded> =
    LazyLock::new(|| Loaded::parse(None).expect("the presets parse"));

impl PartialEq for Sources {
    fn eq(&self, other: &Self) -> bool {
        self.loaded() == other.loaded()
    }
}

impl Eq for Sources {}

impl Sources {
    /// The presets, with `SOURCES` (a path, or inline JSON) laid over them.
    /// A `SOURCES` is read and checked here, at init; the presets alone
    /// wait for their first use.
    pub fn load(sources_env: Option<&str>) -> Result<Self, String> {
        let loaded = match sources_env.map(str::trim) {
            None | Some("") => None,
            Some(_) => Some(Loaded::parse(sources_env)?),
        };
        Ok(Self { loaded })
    }

    /// Parses the presets now if they are still waiting (the warm-up, so
    /// the first request does not).
    pub fn prepare(&self) {
        let _ = self.loaded();
    }

    fn loaded(&self) -> &Loaded {
        self.loaded.as_ref().unwrap_or(&PRESETS_ONLY)
    }

    pub fn get(&self, name: &str) -> Option<&SourceDef> {
        self.loaded().defs.get(name)
    }

    /// The first source (by name) whose `eventbridge` lists match the event.
    pub fn for_eventbridge(&self, event: &Value) -> Option<&SourceDef> {
        self.loaded()
            .defs
            .values()
            .find(|d| d.eventbridge.as_ref().is_some_and(|m| m.matches(event)))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.loaded().defs.keys().map(String::as_str)
    }

    /// Sources whose `SOURCES` definition asks for write-back itself.
    pub fn chosen_notify(&self) -> &[String] {
        &self.loaded().chosen_notify
    }

    /// Sources that would write back (their own `notify` or a preset's).
    pub fn notifying(&self) -> impl Iterator<Item = &str> {
        self.loaded()
            .defs
            .values()
            .filter(|d| d.notify.is_some())
            .map(|d| d.name.as_str())
    }

    /// How the built-in source `generic` authenticates.
    pub fn generic_auth(&self) -> &AuthDef {
        &self.loaded().generic
    }

    /// How the `GET` routes authenticate: `generic`'s auth or `reader`'s.
    pub fn read_auth(&self) -> &AuthDef {
        &self.loaded().read
    }

    /// The tenants `generic`'s callers may act for.
    pub fn generic_tenants(&self) -> &TenantAllow {
        &self.loaded().generic_tenants
    }

    /// `reader`'s own auth and the tenants its callers may read.
    pub fn reader(&self) -> Option<&(AuthDef, TenantAllow)> {
        self.loaded().reader.as_ref()
    }
}

impl Loaded {
    fn parse(sources_env: Option<&str>) -> Result<Self, String> {
        let presets: Map<String, Value> =
            serde_json::from_str(PRESETS).expect("the presets are a valid JSON object");
        let mut user: Map<String, Value> = match sources_env.map(str::trim) {
            None | Some("") => Map::new(),
            Some(text) => {
                let json_text = if text.starts_with('{') {
                    text.to_string()
                } else {
                    std::fs::read_to_string(text)
                        .map_err(|e| format!("cannot read '{text}': {e}"))?
                };
                let v: Value = serde_json::from_str(&json_text)
                    .map_err(|e| format!("is not valid JSON: {e}"))?;
                match v.get("sources") {
                    Some(Value::Object(m)) => m.clone(),
                    _ => return Err("must be a JSON object with an object 'sources'".into()),
                }
            }
        };
        // A definition that cannot be used; init stops with this line.
        let fail =
            |name: &str, (field, reason)| format!("source '{name}': field '{field}' {reason}");
        let (generic, generic_tenants) = match user.remove(GENERIC) {
            None => (AuthDef::standard(GENERIC), TenantAllow::All),
            Some(mut def) => {
                let tenants = allowed_tenants(&mut def).map_err(|e| fail(GENERIC, e))?;
                (
                    AuthDef::parse_generic(&def).map_err(|e| fail(GENERIC, e))?,
                    tenants,
                )
            }
        };
        let reader = match user.remove(READER) {
            None => None,
            Some(mut def) => {
                let tenants = allowed_tenants(&mut def).map_err(|e| fail(READER, e))?;
                AuthDef::parse_builtin(&def)
                    .map_err(|e| fail(READER, e))?
                    .map(|auth| (auth, tenants))
            }
        };
        let read = match &reader {
            None => generic.clone(),
            Some((auth, _)) => generic.or(auth),
        };
        let chosen_notify = user
            .iter()
            .filter(|(_, d)| d.get("notify").is_some_and(|n| !n.is_null()))
            .map(|(n, _)| n.clone())
            .collect();
        let mut defs = BTreeMap::new();
        let given = presets.iter().filter(|(n, _)| !user.contains_key(*n));
        for (name, def) in given.chain(&user) {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!(
                    "source '{name}': the name may hold only letters, digits, '-' and '_'"
                ));
            }
            let def = parse_def(name, def, &presets).map_err(|e| fail(name, e))?;
            defs.insert(name.clone(), def);
        }
        Ok(Self {
            defs,
            generic,
            read,
            generic_tenants,
            reader,
            chosen_notify,
        })
    }
}

/// A built-in source's `"tenants"` (taken out of its definition): the
/// tenants its callers may act for; absent, every one.
fn allowed_tenants(def: &mut Value) -> Result<TenantAllow, (String, String)> {
    let Some(list) = def.as_object_mut().and_then(|o| o.remove("tenants")) else {
        return Ok(TenantAllow::All);
    };
    let bad = || {
        (
            "tenants".to_string(),
            "must be a non-empty list of tenant names (lowercase letters, digits and '-', at most 32)"
                .to_string(),
        )
    };
    let names: Vec<String> = serde_json::from_value(list).map_err(|_| bad())?;
    if names.is_empty() || !names.iter().all(|n| crate::domain::tenant::valid_name(n)) {
        return Err(bad());
    }
    Ok(TenantAllow::Only(names))
}

impl Default for Sources {
    fn default() -> Self {
        Self::load(None).expect("the presets parse")
    }
}

/// One source's definition; an error is `(field, reason)`.
fn parse_def(
    name: &str,
    def: &Value,
    presets: &Map<String, Value>,
) -> Result<SourceDef, (String, String)> {
    let mut def = def.clone();
    // `extends` starts from a preset and changes only the fields given,
    // e.g. Jira with another device field.
    if let Some(obj) = def.as_object_mut()
        && let Some(base) = obj.remove("extends")
    {
        let extends = |reason: String| ("extends".to_string(), reason);
        let base_name = base
            .as_str()
            .ok_or_else(|| extends("must be a preset's name".into()))?;
        let mut merged = presets
            .get(base_name)
            .and_then(Value::as_object)
            .ok_or_else(|| extends(format!("names no preset ('{base_name}')")))?
            .clone();
        merged.append(obj);
        *obj = merged;
    }
    // A source only EventBridge reaches needs no HTTP auth: IAM admitted
    // its events, and without `auth` its webhook route refuses every call.
    let bridged = def.get("eventbridge").is_some();
    let mut def: SourceDef = from_value("", &def)?;
    if def.auth.schemes().is_empty() && !bridged {
        let reason = "is required and must be a scheme object or a non-empty list of them";
        return Err(("auth".into(), reason.into()));
    }
    def.name = name.to_string();
    def.id_header = def.id_header.map(|h| h.to_ascii_lowercase());
    Ok(def)
}

/// A condition's `in`: strings, numbers or booleans, compared as text.
fn texts<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    non_empty_list::<D, Value>(d)?
        .iter()
        .map(scalar_text)
        .collect::<Option<_>>()
        .ok_or_else(|| de::Error::custom("must hold only strings, numbers or booleans"))
}

/// `null` is the default, so an `extends` can drop what a preset set.
fn or_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn notify<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::domain::notify::NotifyDef>, D::Error> {
    Option::<Value>::deserialize(d)?
        .map(|v| crate::domain::notify::NotifyDef::parse(&v).map_err(de::Error::custom))
        .transpose()
}

fn default_comment() -> Template {
    Template::parse("Offboarded for {ticket}").expect("a template")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::FieldError;
    use serde_json::json;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn ptr(s: &str) -> Pointer {
        Pointer::parse(s).unwrap()
    }

    #[test]
    fn pointers_follow_rfc_6901_including_escapes() {
        let doc =
            json!({"foo": ["bar", "baz"], "": 0, "a/b": 1, "c%d": 2, "m~n": 8, " ": 7, "k\"l": 6});
        assert_eq!(ptr("").resolve(&doc), Some(&doc));
        assert_eq!(ptr("/foo/0").resolve(&doc), Some(&json!("bar")));
        assert_eq!(ptr("/").resolve(&doc), Some(&json!(0)));
        assert_eq!(ptr("/a~1b").resolve(&doc), Some(&json!(1)));
        assert_eq!(ptr("/c%d").resolve(&doc), Some(&json!(2)));
        assert_eq!(ptr("/m~0n").resolve(&doc), Some(&json!(8)));
        assert_eq!(ptr("/ ").resolve(&doc), Some(&json!(7)));
        assert_eq!(ptr("/k\"l").resolve(&doc), Some(&json!(6)));
        assert_eq!(ptr("/foo/01").resolve(&doc), None);
        assert_eq!(ptr("/foo/-").resolve(&doc), None);
        assert_eq!(ptr("/foo/2").resolve(&doc), None);
        // "~01" is "~1" literally, not "/".
        assert_eq!(ptr("/~01").tokens, vec!["~1"]);
        assert!(Pointer::parse("foo").is_err());
        assert!(Pointer::parse("/a~2").is_err());
    }

    #[test]
    fn wildcard_collects_from_every_element() {
        let doc = json!({"alerts": [
            {"evidence": [{"mdeDeviceId": "a"}, {"other": 1}, {"mdeDeviceId": null}]},
            {"evidence": [{"mdeDeviceId": "b"}]}
        ], "*": "star"});
        let got: Vec<&Value> = ptr("/alerts/*/evidence/*/mdeDeviceId").resolve_all(&doc);
        assert_eq!(got, vec![&json!("a"), &json!(null), &json!("b")]);
        assert_eq!(ptr("/*").resolve(&doc), Some(&json!("star")));
        let pd = json!({"custom_fields": [{"name": "env", "value": "prod"}, {"name": "mde_devices", "value": ["a", "b"]}]});
        assert_eq!(
            ptr("/custom_fields/[name=mde_devices]/value").resolve(&pd),
            Some(&json!(["a", "b"]))
        );
        assert_eq!(ptr("/custom_fields/[name=nope]/value").resolve(&pd), None);
    }

    #[test]
    fn templates_replace_ticket_and_pointers() {
        let t = Template::parse(
            "Closed {ticket}: {/fields/summary} ({/missing}) {not a placeholder} {/n}",
        )
        .unwrap();
        let doc = json!({"fields": {"summary": "Retire laptop"}, "n": 42});
        assert_eq!(
            t.render("IT-42", &doc),
            "Closed IT-42: Retire laptop () {not a placeholder} 42"
        );
        assert_eq!(
            Template::parse("no braces").unwrap().render("T", &doc),
            "no braces"
        );
        assert_eq!(
            Template::parse("open { only").unwrap().render("T", &doc),
            "open { only"
        );
        assert!(Template::parse("{/bad~}").is_err());
    }

    fn def(v: Value) -> SourceDef {
        parse_def("test", &v, &Map::new()).unwrap()
    }

    fn basic() -> SourceDef {
        def(json!({
            "auth": {"scheme": "bearer", "secret": "k"},
            "when": [{"pointer": "/state", "in": ["Closed"]}],
            "ticket": "/number",
            "devices": ["/ci", "/more"],
            "comment": "{ticket}: {/desc}"
        }))
    }

    #[test]
    fn maps_ticket_devices_and_comment() {
        let doc = json!({"state": "Closed", "number": 1234, "ci": "PC-1", "more": ["PC-2", "pc-1", ""], "desc": "line\nbreak"});
        let Mapped::Act(r) = basic().map(&doc).unwrap() else {
            panic!("ignored")
        };
        assert_eq!(r.ticket.as_str(), "1234", "a number renders as text");
        let given: Vec<&str> = r.devices.iter().map(|d| d.given.as_str()).collect();
        assert_eq!(given, ["PC-1", "PC-2"], "deduplicated, empty skipped");
        assert_eq!(r.comment.as_str(), "1234: line break");
    }

    #[test]
    fn a_condition_that_does_not_hold_ignores_the_event() {
        let doc = json!({"state": "Open", "number": "1", "ci": "PC-1"});
        let Mapped::Ignored { reason } = basic().map(&doc).unwrap() else {
            panic!("acted")
        };
        assert!(
            reason.contains("/state") && reason.contains("Open"),
            "{reason}"
        );
        let Mapped::Ignored { reason } = basic().map(&json!({})).unwrap() else {
            panic!("acted")
        };
        assert!(reason.contains("absent"), "{reason}");
    }

    #[test]
    fn missing_ticket_or_devices_name_the_pointer() {
        let e = basic()
            .map(&json!({"state": "Closed", "ci": "PC-1"}))
            .unwrap_err();
        assert_eq!(e.field(), "/number");
        let e = basic()
            .map(&json!({"state": "Closed", "number": "1"}))
            .unwrap_err();
        assert_eq!(e.field(), "/ci, /more");
        let e = basic()
            .map(&json!({"state": "Closed", "number": "1", "ci": [["PC-1"]]}))
            .unwrap_err();
        assert_eq!(e.field(), "/ci");
        assert!(e.to_string().contains("nested"));
        let e = basic()
            .map(&json!({"state": "Closed", "number": "1", "ci": 5}))
            .unwrap_err();
        assert_eq!(e.field(), "/ci");
        let e = basic()
            .map(&json!({"state": "Closed", "number": "1", "ci": "two words"}))
            .unwrap_err();
        assert_eq!(e.field(), "/ci");
        assert!(matches!(e, FieldError::OutOfBounds { .. }));
    }

    #[test]
    fn a_long_comment_is_cut_to_1000() {
        let doc = json!({"state": "Closed", "number": "1", "ci": "PC-1", "desc": "x".repeat(5000)});
        let Mapped::Act(r) = basic().map(&doc).unwrap() else {
            panic!()
        };
        assert_eq!(r.comment.as_str().chars().count(), 1000);
    }

    fn window(unit: &str) -> Freshness {
        from_value(
            "freshness",
            &json!({"pointer": "/t", "unit": unit, "max_age_seconds": 600}),
        )
        .unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn freshness_reads_each_unit_and_refuses_old_future_and_missing() {
        let now = at(1_800_000_000);
        let ms = window("ms");
        assert_eq!(ms.check(&json!({"t": 1_799_999_500_123u64}), now), Ok(()));
        assert_eq!(ms.check(&json!({"t": "1799999500123"}), now), Ok(()));
        assert!(matches!(
            ms.check(&json!({"t": 1_799_999_000_000u64}), now),
            Err(StaleError::TooOld {
                age_seconds: 1000,
                ..
            })
        ));
        assert!(matches!(
            ms.check(&json!({"t": 1_800_000_301_000u64}), now),
            Err(StaleError::InTheFuture(_))
        ));
        assert_eq!(ms.check(&json!({"t": 1_800_000_299_000u64}), now), Ok(()));
        assert_eq!(
            ms.check(&json!({}), now),
            Err(StaleError::Missing("/t".into()))
        );
        for bad in [
            json!(null),
            json!(-5),
            json!(1.5e12),
            json!("2019-1-30 15:51:34,870"),
            json!(u64::MAX),
        ] {
            assert!(ms.check(&json!({"t": bad}), now).is_err(), "{bad}");
        }
        let s = window("s");
        assert_eq!(s.check(&json!({"t": 1_799_999_500}), now), Ok(()));
        assert!(s.check(&json!({"t": 1_799_999_000}), now).is_err());
        let r = window("rfc3339");
        // 1_800_000_000 is 2027-01-15T08:00:00Z.
        assert_eq!(
            r.check(&json!({"t": "2027-01-15T07:55:00.169Z"}), now),
            Ok(())
        );
        assert_eq!(
            r.check(&json!({"t": "2027-01-15T08:55:00+01:00"}), now),
            Ok(())
        );
        assert_eq!(
            r.check(&json!({"t": "2027-01-15T02:55:00-05:00"}), now),
            Ok(())
        );
        assert!(r.check(&json!({"t": "2027-01-15T08:55:00Z"}), now).is_err());
        assert!(
            r.check(&json!({"t": "2020-10-02T18:45:22.169Z"}), now)
                .is_err()
        );
        for bad in [
            "",
            "yesterday",
            "2027-01-15T07:55:00",
            "2027-01-15T07:55:00+25:00",
            "2027-01-15T07:55:00ü+01:00",
        ] {
            assert!(
                matches!(
                    r.check(&json!({"t": bad}), now),
                    Err(StaleError::Unreadable(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn stamping_now_makes_an_old_sample_fresh() {
        let now = SystemTime::now();
        for unit in ["ms", "s", "rfc3339"] {
            let w = window(unit);
            let mut doc = json!({"t": 0});
            assert!(w.check(&doc, now).is_err());
            w.stamp(&mut doc, now);
            assert_eq!(w.check(&doc, now), Ok(()), "{unit}: {doc}");
        }
    }

    #[test]
    fn preset_windows_fit_inside_the_replay_memory() {
        let all = Sources::default();
        for name in ["jira", "pagerduty"] {
            let w = all.get(name).unwrap().freshness.clone().expect(name);
            assert!(w.max_age <= crate::app::idempotency::REMEMBER_FOR, "{name}");
        }
    }

    #[test]
    fn freshness_definitions_are_checked() {
        for (f, field) in [
            (
                json!({"pointer": "/t", "unit": "minutes", "max_age_seconds": 60}),
                "freshness.unit",
            ),
            (
                json!({"pointer": "t", "unit": "s", "max_age_seconds": 60}),
                "freshness.pointer",
            ),
            (
                json!({"pointer": "/t", "unit": "s", "max_age_seconds": 0}),
                "freshness.max_age_seconds",
            ),
            (
                json!({"pointer": "/t", "unit": "s"}),
                "freshness.max_age_seconds",
            ),
            (
                json!({"pointer": "/t", "unit": "s", "max_age_seconds": 60, "skew": 1}),
                "freshness.skew",
            ),
            (json!("/t"), "freshness"),
        ] {
            assert_eq!(
                from_value::<Freshness>("freshness", &f).unwrap_err().0,
                field,
                "{f}"
            );
        }
    }

    #[test]
    fn presets_load_and_sources_replace_them_by_name() {
        let all = Sources::load(None).unwrap();
        let names: Vec<&str> = all.names().collect();
        assert_eq!(
            names,
            [
                "defender-incident",
                "jira",
                "jira-automation",
                "pagerduty",
                "servicenow"
            ]
        );
        let custom = Sources::load(Some(r#"{"sources": {"jira": {"auth": {"scheme": "bearer", "secret": "j"}, "ticket": "/k", "devices": "/d"},
            "tines": {"auth": {"scheme": "standard-webhooks", "secret": "tines"}, "ticket": "/t", "devices": ["/d"]}}}"#)).unwrap();
        assert_eq!(
            custom.get("jira").unwrap().auth.schemes(),
            [crate::intake::auth::Scheme::Bearer { secret: "j".into() }]
        );
        assert!(custom.get("pagerduty").is_some());
        assert!(custom.get("tines").is_some());
    }

    #[test]
    fn extends_changes_only_the_fields_given() {
        let s = Sources::load(Some(r#"{"sources": {"jira": {"extends": "jira", "devices": ["/issue/fields/customfield_12345"]}}}"#)).unwrap();
        let j = s.get("jira").unwrap();
        assert_eq!(j.devices, vec![ptr("/issue/fields/customfield_12345")]);
        assert_eq!(j.when.len(), 3);
        assert!(j.freshness.is_some(), "the preset's window is kept");
        assert!(matches!(
            j.auth.schemes(),
            [crate::intake::auth::Scheme::HmacSha256Hex { .. }]
        ));
    }

    #[test]
    fn errors_give_the_path_to_the_value_at_fault() {
        let auth = r#"{"scheme": "bearer", "secret": "s"}"#;
        for (rest, field) in [
            (
                r#""auth": [{"scheme": "bearer", "secret": "a"}, {"scheme": "iam", "principals": ["a"], "secret": "b"}]"#,
                "'auth[1].secret' is not a known field",
            ),
            (r#""auth": []"#, "'auth' holds an empty list"),
            (
                r#""auth": {"scheme": "iam", "principals": []}"#,
                "'auth' holds an empty list",
            ),
            (
                r#""auth": {"scheme": "basic", "secret": ""}"#,
                "'auth' has an empty",
            ),
            (
                &format!(r#""auth": {auth}, "ticket": ["/a", "b"]"#),
                "'ticket[1]' 'b' is not a JSON Pointer",
            ),
            (
                &format!(r#""auth": {auth}, "freshness": {{"pointer": "/t", "unit": "m"}}"#),
                "'freshness.unit' unknown variant `m`",
            ),
            (
                &format!(r#""auth": {auth}, "notify": {{"to": "servicenow", "tabel": "x"}}"#),
                "'notify.tabel' is not a known field",
            ),
            (
                &format!(r#""auth": {auth}, "notify": {{"to": "servicenow", "table": "a/b"}}"#),
                "'notify' table 'a/b' is not a table name",
            ),
            (
                r#""eventbridge": {"source": ["aws.x"]}"#,
                "'eventbridge.detail-type' is required",
            ),
        ] {
            let json =
                format!(r#"{{"sources": {{"x": {{"ticket": "/t", "devices": "/d", {rest}}}}}}}"#);
            let e = Sources::load(Some(&json)).unwrap_err();
            assert!(e.contains(&format!("source 'x': field {field}")), "{e}");
        }
        // Whatever `extends` took from a preset, null drops it.
        let s = Sources::load(Some(
            r#"{"sources": {"jira": {"extends": "jira", "when": null, "freshness": null, "notify": null, "id_header": "X-Id"}}}"#,
        ))
        .unwrap();
        let j = s.get("jira").unwrap();
        assert!(j.when.is_empty() && j.freshness.is_none() && j.notify.is_none());
        assert_eq!(j.id_header.as_deref(), Some("x-id"));
        // Only EventBridge reaches a source without auth.
        let s = Sources::load(Some(
            r#"{"sources": {"eb": {"ticket": "/t", "devices": "/d", "eventbridge": {"source": ["a"], "detail-type": ["b"]}}}}"#,
        ))
        .unwrap();
        assert!(s.get("eb").unwrap().auth.schemes().is_empty());
    }

    #[test]
    fn bad_definitions_name_the_source_and_field() {
        for (json, field) in [
            (
                r#"{"sources": {"x": {"ticket": "/t", "devices": "/d"}}}"#,
                "'auth'",
            ),
            (
                r#"{"sources": {"x": {"auth": {"scheme": "oauth", "secret": "s"}, "ticket": "/t", "devices": "/d"}}}"#,
                "'auth.scheme'",
            ),
            (
                r#"{"sources": {"x": {"auth": {"scheme": "bearer"}, "ticket": "/t", "devices": "/d"}}}"#,
                "'auth.secret'",
            ),
            (
                r#"{"sources": {"x": {"auth": {"scheme": "hmac-sha256-hex", "secret": "s"}, "ticket": "/t", "devices": "/d"}}}"#,
                "'auth.header'",
            ),
            (
                r#"{"sources": {"x": {"auth": {"scheme": "bearer", "secret": "s"}, "ticket": "t", "devices": "/d"}}}"#,
                "'ticket'",
            ),
            (
                r#"{"sources": {"x": {"auth": {"scheme": "bearer", "secret": "s"}, "ticket": "/t"}}}"#,
                "'devices'",
            ),
            (
                r#"{"sources": {"x": {"auth": {"scheme": "bearer", "secret": "s"}, "ticket": "/t", "devices": "/d", "when": [{"pointer": "/a", "in": []}]}}}"#,
                "'when[0].in'",
            ),
            (
                r#"{"sources": {"x": {"auth": {"scheme": "bearer", "secret": "s"}, "ticket": "/t", "devices": "/d", "colour": 1}}}"#,
                "'colour'",
            ),
            (r#"{"sources": {"x": {"extends": "nope"}}}"#, "'extends'"),
        ] {
            let e = Sources::load(Some(json)).unwrap_err();
            assert!(e.contains("source 'x'") && e.contains(field), "{e}");
        }
        assert!(
            Sources::load(Some("{not json"))
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(
            Sources::load(Some("/nonexistent/sources.json"))
                .unwrap_err()
                .contains("cannot read")
        );
        assert!(
            Sources::load(Some(r#"{"sources": {"bad name": {}}}"#))
                .unwrap_err()
                .contains("bad name")
        );
    }
}
