//! The ledger's DynamoDB table, created in moto from template.yaml's
//! `LedgerTable` resource: the template is the one definition of the key
//! schema, so a test table can never drift from what a deploy creates.

use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
    PointInTimeRecoverySpecification, Projection, ProjectionType, ScalarAttributeType,
    SseSpecification, TimeToLiveSpecification,
};
use serde_json::Value;

use crate::moto;

/// Where the template sits: the workspace root, above this crate.
const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");

/// The properties this helper turns into DynamoDB calls. A property the
/// template gains and the helper does not apply would make test tables
/// differ from deployed ones, so anything else is refused.
const APPLIED: &[&str] = &[
    "BillingMode",
    "AttributeDefinitions",
    "KeySchema",
    "GlobalSecondaryIndexes",
    "TimeToLiveSpecification",
    "PointInTimeRecoverySpecification",
    "SSESpecification",
];

static SEQ: AtomicU64 = AtomicU64::new(0);

/// The `LedgerTable` resource's `Properties` from template.yaml, as JSON.
/// Panics (this is test support) when the template has no such resource or
/// its properties hold a CloudFormation function: the table's definition
/// must be literal for anyone to create it outside CloudFormation.
pub fn ledger_table_definition() -> Value {
    let text = std::fs::read_to_string(TEMPLATE).expect("read template.yaml");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("template.yaml is YAML");
    let mut props = doc
        .get("Resources")
        .and_then(|r| r.get("LedgerTable"))
        .and_then(|t| t.get("Properties"))
        .expect("template.yaml has Resources.LedgerTable.Properties")
        .clone();
    // Who may use the table, not what it is: moto does not model resource
    // policies, and the policy names the stack's roles.
    if let Some(map) = props.as_mapping_mut() {
        map.remove("ResourcePolicy");
    }
    let json = yaml_to_json(props)
        .unwrap_or_else(|tag| panic!("LedgerTable's Properties must be literal, found {tag}"));
    for key in json.as_object().expect("Properties is a mapping").keys() {
        assert!(
            APPLIED.contains(&key.as_str()),
            "LedgerTable has the property {key}, which ledger_table_from_template does not apply"
        );
    }
    json
}

/// Converts plain YAML to JSON; a tagged value (`!Ref`, `!Sub`, ...) is
/// returned as the error, named by its tag.
fn yaml_to_json(v: serde_yaml_ng::Value) -> Result<Value, String> {
    use serde_yaml_ng::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => serde_json::to_value(n).map_err(|e| e.to_string())?,
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                let k = k.as_str().ok_or("a non-string key")?.to_string();
                out.insert(k, yaml_to_json(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => return Err(t.tag.to_string()),
    })
}

/// A client for moto's DynamoDB with moto's test credentials.
pub fn moto_dynamodb() -> aws_sdk_dynamodb::Client {
    dynamodb_at(&moto::moto().endpoint)
}

/// A client for a DynamoDB endpoint (moto, or a proxy in front of it).
pub fn dynamodb_at(endpoint: &str) -> aws_sdk_dynamodb::Client {
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

fn text<'v>(v: &'v Value, what: &str) -> &'v str {
    v.as_str()
        .unwrap_or_else(|| panic!("LedgerTable: {what} is not a string: {v}"))
}

fn key_schema(v: &Value) -> Vec<KeySchemaElement> {
    v.as_array()
        .expect("KeySchema is a list")
        .iter()
        .map(|k| {
            KeySchemaElement::builder()
                .attribute_name(text(&k["AttributeName"], "AttributeName"))
                .key_type(KeyType::from(text(&k["KeyType"], "KeyType")))
                .build()
                .expect("a key schema element")
        })
        .collect()
}

/// Creates the template's ledger table in moto under a name no other test
/// uses, with its TTL and point-in-time recovery, and returns the name.
pub async fn ledger_table_from_template() -> String {
    let name = format!(
        "mde-ledger-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    );
    create_ledger_table(&moto_dynamodb(), &name).await;
    name
}

/// Creates the template's ledger table as `name` through `client`.
pub async fn create_ledger_table(client: &aws_sdk_dynamodb::Client, name: &str) {
    let def = ledger_table_definition();
    let mut create = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::from(text(&def["BillingMode"], "BillingMode")))
        .set_key_schema(Some(key_schema(&def["KeySchema"])));
    for a in def["AttributeDefinitions"]
        .as_array()
        .expect("AttributeDefinitions is a list")
    {
        create = create.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(text(&a["AttributeName"], "AttributeName"))
                .attribute_type(ScalarAttributeType::from(text(
                    &a["AttributeType"],
                    "AttributeType",
                )))
                .build()
                .expect("an attribute definition"),
        );
    }
    for g in def["GlobalSecondaryIndexes"]
        .as_array()
        .into_iter()
        .flatten()
    {
        create = create.global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(text(&g["IndexName"], "IndexName"))
                .set_key_schema(Some(key_schema(&g["KeySchema"])))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::from(text(
                            &g["Projection"]["ProjectionType"],
                            "ProjectionType",
                        )))
                        .build(),
                )
                .build()
                .expect("an index"),
        );
    }
    if let Some(sse) = def.get("SSESpecification") {
        create = create.sse_specification(
            SseSpecification::builder()
                .enabled(sse["SSEEnabled"].as_bool().unwrap_or(false))
                .build(),
        );
    }
    create
        .send()
        .await
        .expect("create the ledger table in moto");
    if let Some(ttl) = def.get("TimeToLiveSpecification") {
        client
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(text(&ttl["AttributeName"], "TTL AttributeName"))
                    .enabled(ttl["Enabled"].as_bool().unwrap_or(false))
                    .build()
                    .expect("a TTL specification"),
            )
            .send()
            .await
            .expect("TTL on the ledger table");
    }
    if let Some(pitr) = def.get("PointInTimeRecoverySpecification") {
        client
            .update_continuous_backups()
            .table_name(name)
            .point_in_time_recovery_specification(
                PointInTimeRecoverySpecification::builder()
                    .point_in_time_recovery_enabled(
                        pitr["PointInTimeRecoveryEnabled"]
                            .as_bool()
                            .unwrap_or(false),
                    )
                    .build()
                    .expect("a PITR specification"),
            )
            .send()
            .await
            .expect("point-in-time recovery on the ledger table");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloudformation_function_in_the_definition_is_named_not_dropped() {
        let y: serde_yaml_ng::Value =
            serde_yaml_ng::from_str("TableName: !Ref Name\nBillingMode: PAY_PER_REQUEST").unwrap();
        assert_eq!(yaml_to_json(y), Err("!Ref".to_string()));
    }

    #[test]
    fn the_templates_definition_is_literal_and_fully_applied() {
        let def = ledger_table_definition();
        assert_eq!(def["KeySchema"][0]["AttributeName"], "pk");
    }
}
