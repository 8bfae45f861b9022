//! Real-shaped API Gateway events around a body, as Lambda delivers them.

use serde_json::{Map, Value, json};

/// An HTTP API (payload format 2.0) event, `$default` stage.
pub fn http_api_v2(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Value {
    let headers: Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_lowercase(), Value::from(*v)))
        .chain([
            ("content-type".to_string(), Value::from("application/json")),
            (
                "host".to_string(),
                Value::from("abc123.execute-api.us-east-1.amazonaws.com"),
            ),
        ])
        .collect();
    // `/v1/tickets/T?tenant=x`: the query as API Gateway splits it off.
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let params: Map<String, Value> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), Value::from(v)))
        .collect();
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.10",
                "userAgent": "Splunk-SOAR/6.3"
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "25/Nov/2026:09:00:00 +0000",
            "timeEpoch": 1795683600000u64
        },
        "body": body,
        "isBase64Encoded": false
    });
    if !params.is_empty() {
        event["queryStringParameters"] = Value::Object(params);
    }
    event
}
