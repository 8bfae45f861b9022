//! What template.yaml promises about who may do what (SECURITY.md, "Doors"):
//! read from the template itself, so a change that widens a door fails here.

use serde_yaml_ng::Value;

fn template() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/template.yaml"))
        .expect("template.yaml");
    serde_yaml_ng::from_str(&text).expect("template.yaml is YAML")
}

fn resource<'a>(t: &'a Value, name: &str) -> &'a Value {
    &t["Resources"][name]
}

/// A YAML value with its CloudFormation tags (`!If`, `!GetAtt`) as text,
/// for "does this mention that" checks.
fn text(v: &Value) -> String {
    serde_yaml_ng::to_string(v).unwrap_or_default()
}

/// The statements of a policy document, with `!If [cond, stmt, NoValue]`
/// unwrapped to the statement.
fn statements(doc: &Value) -> Vec<Value> {
    doc["Statement"]
        .as_sequence()
        .expect("a statement list")
        .iter()
        .map(|s| match s {
            Value::Tagged(t) if t.tag == "If" => t.value[1].clone(),
            other => other.clone(),
        })
        .collect()
}

fn sid<'a>(stmts: &'a [Value], sid: &str) -> &'a Value {
    stmts
        .iter()
        .find(|s| s["Sid"].as_str() == Some(sid))
        .unwrap_or_else(|| panic!("no statement {sid}"))
}

fn actions(s: &Value) -> Vec<String> {
    match &s["Action"] {
        Value::String(a) => vec![a.clone()],
        Value::Sequence(list) => list
            .iter()
            .filter_map(|a| a.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn only_the_function_roles_write_the_ledger_and_the_worker_only_what_it_uses() {
    let t = template();
    let table = resource(&t, "LedgerTable");
    let stmts = statements(&table["Properties"]["ResourcePolicy"]["PolicyDocument"]);
    let deny = sid(&stmts, "NobodyElseWrites");
    assert_eq!(deny["Effect"], "Deny");
    assert_eq!(deny["Principal"], "*");
    for write in [
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:BatchWriteItem",
    ] {
        assert!(actions(deny).contains(&write.to_string()), "{write}");
    }
    let except = text(&deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]);
    assert!(except.contains("OffboardFunctionRole.Arn"), "{except}");
    assert!(
        except.contains("OffboardWorkerFunctionRole.Arn"),
        "{except}"
    );
    assert_eq!(
        actions(sid(&stmts, "TheFunction")),
        [
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:Query",
            "dynamodb:BatchGetItem"
        ],
        "the function deletes nothing: items leave by TTL"
    );
    assert_eq!(
        actions(sid(&stmts, "TheWorker")),
        [
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:BatchGetItem"
        ],
        "the worker claims each sealed message (PutItem) and reads no ticket"
    );
    // The roles themselves hold no DynamoDB permission: the table says who.
    for f in ["OffboardFunction", "OffboardWorkerFunction"] {
        let policies = text(&resource(&t, f)["Properties"]["Policies"]);
        assert!(!policies.contains("dynamodb:"), "{f}: {policies}");
    }
}

#[test]
fn failure_queues_take_messages_only_from_the_function_roles() {
    let t = template();
    for (policy, queue) in [
        ("FailureQueuesPolicy", "OffboardDeadLetterQueue"),
        (
            "OffboardEventFailureQueuePolicy",
            "OffboardEventFailureQueue",
        ),
    ] {
        let p = &resource(&t, policy)["Properties"];
        assert!(text(&p["Queues"]).contains(queue), "{policy}");
        let stmts = statements(&p["PolicyDocument"]);
        let deny = &stmts[0];
        assert_eq!(deny["Effect"], "Deny", "{policy}");
        assert_eq!(actions(deny), ["sqs:SendMessage"], "{policy}");
        assert!(
            text(&deny["Condition"]).contains("OffboardFunctionRole.Arn"),
            "{policy}"
        );
    }
}

#[test]
fn the_eventbridge_door_names_its_senders() {
    let t = template();
    let bus = &resource(&t, "OffboardEventBusPolicy")["Properties"]["Statement"];
    assert_eq!(bus["Effect"], "Deny");
    assert_eq!(bus["Action"], "events:PutEvents");
    assert!(text(&bus["Condition"]["ArnNotLike"]).contains("EventSenderArns"));
    assert!(text(&bus["Condition"]["StringEquals"]).contains("EventSource"));
    // Deploying a rule without naming who may send to it is refused.
    let rule = &t["Rules"]["EventSendersNamed"];
    assert!(text(&rule["RuleCondition"]).contains("EventBusName"));
    assert!(text(&rule["Assertions"]).contains("EventSenderArns"));
    // The door opens only with the rule; the worker serves SQS only.
    let env = text(&resource(&t, "OffboardFunction")["Properties"]["Environment"]);
    assert!(
        env.contains("DIRECT_EVENTS") && env.contains("HasEventBus"),
        "{env}"
    );
    let worker = &resource(&t, "OffboardWorkerFunction")["Properties"]["Environment"]["Variables"];
    assert_eq!(worker["MDE_MODE"], "worker");
}
