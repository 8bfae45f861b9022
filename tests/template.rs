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
        env.contains("DIRECT_EVENTS") && env.contains("HasEventRules"),
        "{env}"
    );
    assert!(text(&t["Conditions"]["HasEventRules"]).contains("HasEventBus"));
    let worker = &resource(&t, "OffboardWorkerFunction")["Properties"]["Environment"]["Variables"];
    assert_eq!(worker["MDE_MODE"], "worker");
}

/// Every alarm in the template, by logical id.
fn alarms(t: &Value) -> Vec<(String, Value)> {
    t["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::CloudWatch::Alarm"))
        .map(|(k, r)| (k.as_str().unwrap().to_string(), r.clone()))
        .collect()
}

/// Alarms page someone: the template refuses a deployment with neither
/// `AlarmEmail` nor `AlarmTopicArn`, and every alarm notifies the topic.
#[test]
fn alarms_cannot_be_deployed_to_nobody() {
    let t = template();
    let rule = &t["Rules"]["AlarmsReachSomeone"];
    assert!(
        rule.get("RuleCondition").is_none(),
        "the assertion holds for every deployment"
    );
    let assert = text(&rule["Assertions"][0]["Assert"]);
    assert!(
        assert.contains("AlarmTopicArn") && assert.contains("AlarmEmail"),
        "{assert}"
    );
    for (name, alarm) in alarms(&t) {
        let actions = text(&alarm["Properties"]["AlarmActions"]);
        assert!(
            actions.contains("AlarmTopic") && actions.contains("AlarmTopicArn"),
            "{name} notifies the alarm topic: {actions}"
        );
    }
}

/// What issue P names as stopping offboards is alarmed, always.
#[test]
fn every_failure_that_stops_offboards_has_an_alarm() {
    let t = template();
    let watched: String = alarms(&t).iter().map(|(_, a)| text(a)).collect();
    for metric in [
        "HealthCheckFailed",
        "CredentialFailure",
        "Unavailable",
        "ActionFailed",
        "ActionTimeOut",
        "ActionNotConfirmed",
        "TrackNotQueued",
        "NotifyFailed",
        "CallbackFailed",
        "Throttles",
        "Errors",
        "OffboardEventFailureQueue",
        "OffboardDeadLetterQueue",
    ] {
        assert!(watched.contains(metric), "no alarm watches {metric}");
    }
    for always in [
        "HealthCheckAlarm",
        "CredentialFailureAlarm",
        "UnavailableAlarm",
        "LambdaThrottlesAlarm",
    ] {
        assert!(
            resource(&t, always)["Condition"].is_null(),
            "{always} cannot be switched off"
        );
    }
    let health = &resource(&t, "HealthCheckAlarm")["Properties"];
    assert_eq!(
        health["TreatMissingData"], "breaching",
        "checks that stop alarm"
    );
}

/// The health check runs every 15 minutes, on the function that serves
/// HTTP (the worker refuses anything but SQS).
#[test]
fn the_health_check_is_scheduled_every_15_minutes() {
    let t = template();
    let rule = &resource(&t, "HealthCheckRule")["Properties"];
    assert_eq!(rule["ScheduleExpression"], "rate(15 minutes)");
    assert!(text(&rule["Targets"]).contains("OffboardFunction.Arn"));
    assert!(!text(&rule["Targets"]).contains("Worker"));
    assert_eq!(
        resource(&t, "HealthRoute")["Properties"]["RouteKey"],
        "GET /v1/health"
    );
    let perm = &resource(&t, "HealthCheckPermission")["Properties"];
    assert!(text(&perm["SourceArn"]).contains("HealthCheckRule"));
}

/// Tracking, write-back and callbacks need the ledger and the queue: the
/// queue comes with the ledger, so they are never silently off.
#[test]
fn the_queue_comes_with_the_ledger() {
    let t = template();
    let queue_mode = text(&t["Conditions"]["QueueMode"]);
    assert!(queue_mode.contains("LedgerOn"), "{queue_mode}");
    assert_eq!(resource(&t, "OffboardQueue")["Condition"], "QueueMode");
}

/// Every metric an alarm reads from the function's namespace is one the
/// code writes (or a device status): a rename cannot leave an alarm
/// watching nothing.
#[test]
fn alarms_watch_metrics_the_code_writes() {
    let metrics_rs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/ops/metrics.rs"))
            .unwrap();
    let t = template();
    for (name, alarm) in alarms(&t) {
        let p = &alarm["Properties"];
        let mut names = Vec::new();
        if text(&p["Namespace"]).contains("MetricsNamespace") {
            names.push(p["MetricName"].as_str().unwrap().to_string());
        }
        for m in p["Metrics"].as_sequence().into_iter().flatten() {
            let stat = &m["MetricStat"]["Metric"];
            if text(&stat["Namespace"]).contains("MetricsNamespace") {
                names.push(stat["MetricName"].as_str().unwrap().to_string());
            }
        }
        for metric in names {
            let written = metrics_rs.contains(&format!("\"{metric}\"")) || metric == "failed";
            assert!(written, "{name} watches {metric}, which nothing writes");
        }
    }
}

/// EC2 Auto Scaling scale-in: nothing without the group; the hook lets go
/// by default (CONTINUE, never ABANDON) and waits as long as the hold; the
/// rule takes the group's hook's events and leaves warm-pool returns out
/// (and a group without a warm pool sends no Destination at all); both
/// roles may complete and heartbeat that group's actions only; the door
/// opens where a rule sends events.
#[test]
fn scale_in_is_scoped_to_its_group_and_never_holds_an_instance_by_default() {
    let t = template();
    for name in [
        "Ec2TerminationHook",
        "Ec2ScaleInRule",
        "Ec2ScaleInPermission",
    ] {
        assert_eq!(
            resource(&t, name)["Condition"],
            "HasAutoScalingGroup",
            "{name}"
        );
    }
    let cond = text(&t["Conditions"]["HasAutoScalingGroup"]);
    assert!(cond.contains("Ec2AutoScalingGroupName"), "{cond}");
    assert_eq!(t["Parameters"]["Ec2AutoScalingGroupName"]["Default"], "");

    let hook = &resource(&t, "Ec2TerminationHook")["Properties"];
    assert_eq!(hook["DefaultResult"], "CONTINUE");
    assert_eq!(
        hook["LifecycleTransition"],
        "autoscaling:EC2_INSTANCE_TERMINATING"
    );
    assert!(text(&hook["HeartbeatTimeout"]).contains("Ec2LifecycleHoldSeconds"));
    assert!(
        !text(&t).contains("ABANDON"),
        "nothing in the template abandons"
    );

    let rule = &resource(&t, "Ec2ScaleInRule")["Properties"];
    assert!(
        rule.get("EventBusName").is_none(),
        "the default bus, where aws.autoscaling events arrive"
    );
    let pattern = &rule["EventPattern"];
    assert_eq!(pattern["source"][0], "aws.autoscaling");
    assert_eq!(
        pattern["detail-type"][0],
        "EC2 Instance-terminate Lifecycle Action"
    );
    let detail = &pattern["detail"];
    assert!(text(&detail["AutoScalingGroupName"]).contains("Ec2AutoScalingGroupName"));
    assert!(text(&detail["LifecycleHookName"]).contains("Ec2LifecycleHookName"));
    let destination: Vec<String> = detail["$or"]
        .as_sequence()
        .expect("$or over Destination")
        .iter()
        .map(|alt| text(&alt["Destination"]))
        .collect();
    assert!(
        destination
            .iter()
            .any(|d| d.contains("anything-but: WarmPool")),
        "{destination:?}"
    );
    assert!(
        destination.iter().any(|d| d.contains("exists: false")),
        "{destination:?}"
    );
    let target = &rule["Targets"][0];
    assert!(text(&target["Arn"]).contains("OffboardFunction.Arn"));
    let permission = &resource(&t, "Ec2ScaleInPermission")["Properties"];
    assert_eq!(permission["Principal"], "events.amazonaws.com");
    assert!(text(&permission["SourceArn"]).contains("Ec2ScaleInRule.Arn"));

    for function in ["OffboardFunction", "OffboardWorkerFunction"] {
        let props = &resource(&t, function)["Properties"];
        let stmts = statements(&props["Policies"][0]);
        let s = sid(&stmts, "LetTheGroupsInstancesGo");
        assert_eq!(
            actions(s),
            [
                "autoscaling:CompleteLifecycleAction",
                "autoscaling:RecordLifecycleActionHeartbeat"
            ],
            "{function}"
        );
        let arn = text(&s["Resource"]);
        assert!(
            arn.contains("autoScalingGroupName/${Ec2AutoScalingGroupName}"),
            "{function}: {arn}"
        );
        assert!(!arn.contains("autoScalingGroupName/*"), "{function}: {arn}");
        // Granted only with the group.
        let raw = &props["Policies"][0]["Statement"];
        let granted = raw
            .as_sequence()
            .unwrap()
            .iter()
            .find(|st| text(st).contains("LetTheGroupsInstancesGo"))
            .unwrap();
        assert!(text(granted).contains("HasAutoScalingGroup"), "{function}");
    }

    // The EventBridge door opens where either rule exists.
    let door = text(
        &resource(&t, "OffboardFunction")["Properties"]["Environment"]["Variables"]["DIRECT_EVENTS"],
    );
    assert!(door.contains("HasEventRules"), "{door}");
    let rules = text(&t["Conditions"]["HasEventRules"]);
    assert!(
        rules.contains("HasEventBus") && rules.contains("HasAutoScalingGroup"),
        "{rules}"
    );
    let env = text(&t["Globals"]["Function"]["Environment"]["Variables"]);
    for var in [
        "EC2_DEVICE_MATCH",
        "LIFECYCLE_HOLD_SECONDS",
        "LIFECYCLE_CHECK_SECONDS",
        "EC2_TENANT",
    ] {
        assert!(env.contains(var), "{var}");
    }
}
