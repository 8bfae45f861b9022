//! JSON log lines with Powertools' keys: `level`, `message`, `timestamp`,
//! `service`, `function_request_id`, `cold_start`, plus the fields of the
//! event and of the spans it runs in, flat at the top level so CloudWatch
//! Logs Insights can filter on them directly.

use std::io::Write;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Id, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

pub struct JsonLayer<W> {
    make_writer: W,
    service: String,
}

struct SpanFields(Map<String, Value>);

struct Visitor<'a>(&'a mut Map<String, Value>);

/// `record_<type>` for the types JSON holds as they are.
macro_rules! record_as_json {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method(&mut self, field: &Field, value: $ty) {
            self.0.insert(field.name().into(), Value::from(value));
        }
    )*};
}

impl Visit for Visitor<'_> {
    record_as_json!(record_str: &str, record_i64: i64, record_u64: u64);
    record_as_json!(record_f64: f64, record_bool: bool);
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::from(format!("{value:?}")));
    }
}

impl<W> JsonLayer<W> {
    pub fn new(make_writer: W) -> Self {
        Self {
            make_writer,
            service: std::env::var("POWERTOOLS_SERVICE_NAME")
                .unwrap_or_else(|_| "mde-offboard".into()),
        }
    }
}

impl<S, W> Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Map::new();
        attrs.record(&mut Visitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(f) = span.extensions_mut().get_mut::<SpanFields>()
        {
            values.record(&mut Visitor(&mut f.0));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("level".into(), Value::from(meta.level().as_str()));
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        line.insert("timestamp".into(), Value::from(now.to_string()));
        line.insert("service".into(), Value::from(self.service.as_str()));
        line.insert("logger".into(), Value::from(meta.target()));
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    line.extend(f.0.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        let mut fields = Map::new();
        event.record(&mut Visitor(&mut fields));
        line.extend(fields);
        line.entry("message").or_insert(Value::from(""));
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let _ = self.make_writer.make_writer().write_all(text.as_bytes());
    }
}

/// The filter `init` installs, from the environment: a level, or a list of
/// `target=level` directives (`info,mde_offboard=debug`); targets not listed
/// log at `info` unless a bare level says otherwise. A value that does not
/// parse is `info`. `Targets` rather than `EnvFilter`: the same syntax
/// without span-field filters, and no regex engine in the binary.
pub fn filter_from_env() -> Targets {
    let level = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("POWERTOOLS_LOG_LEVEL"))
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_LEVEL"))
        .unwrap_or_else(|_| "info".into());
    filter_from(&level)
}

/// `filter_from_env` over a value.
pub fn filter_from(level: &str) -> Targets {
    let level = level.trim().to_lowercase();
    let is_level = |l: &str| l.trim().parse::<LevelFilter>().is_ok();
    let parts: Vec<&str> = level.split(',').filter(|p| !p.trim().is_empty()).collect();
    let valid = !parts.is_empty()
        && parts
            .iter()
            .all(|p| is_level(p) || p.split_once('=').is_some_and(|(_, l)| is_level(l)));
    let mut targets: Targets = level.parse().ok().filter(|_| valid).unwrap_or_default();
    // Only targets listed: everything else stays at info, not off.
    if targets.default_level().is_none() {
        targets = targets.with_default(LevelFilter::INFO);
    }
    // The runtime logs every raw event at TRACE, headers and all: webhook
    // signatures and bearer secrets would reach CloudWatch. The most
    // specific target wins in `Targets`, so this caps the raw event logging
    // whatever the user set.
    let (target, cap) = CAPPED[0];
    targets.with_target(target, cap)
}

/// Targets whose records carry what must never reach a log, and the most
/// verbose level they may log at, whatever `RUST_LOG` says: the runtime's
/// raw event (every request header, signatures and bearer secrets
/// included), and the SDK's transmitted request (an SQS send's body holds
/// the sealed messages). `Targets` alone would let a more specific
/// directive (`target[{body}]=trace`) lift its cap; this filter is applied
/// beside it, and both must pass.
const CAPPED: [(&str, tracing::Level); 2] = [
    (
        "lambda_runtime::layers::api_response",
        tracing::Level::DEBUG,
    ),
    (
        "aws_smithy_runtime::client::orchestrator",
        tracing::Level::DEBUG,
    ),
];

fn never_secret(meta: &tracing::Metadata<'_>) -> bool {
    !CAPPED
        .iter()
        .any(|(target, most)| meta.target().starts_with(target) && meta.level() > most)
}

/// The subscriber `init` installs, writing JSON lines to `writer`.
pub fn subscriber<W>(filter: Targets, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::filter::filter_fn(never_secret))
        .with(JsonLayer::new(writer))
}

/// Installs the JSON layer on stdout. The level comes from `RUST_LOG`, else
/// Powertools' `POWERTOOLS_LOG_LEVEL` or Lambda's `AWS_LAMBDA_LOG_LEVEL`,
/// else `info`.
pub fn init() {
    let _ = subscriber(filter_from_env(), std::io::stdout).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_event_cap_wins_over_any_level_and_bad_values_are_info() {
        let raw = "lambda_runtime::layers::api_response";
        let trace = filter_from("TRACE");
        assert!(trace.would_enable("mde_offboard::ingest", &tracing::Level::TRACE));
        assert!(!trace.would_enable(raw, &tracing::Level::TRACE));
        assert!(trace.would_enable(raw, &tracing::Level::DEBUG));

        let listed = filter_from("warn,mde_offboard=debug");
        assert!(listed.would_enable("mde_offboard::ingest", &tracing::Level::DEBUG));
        assert!(!listed.would_enable("hyper", &tracing::Level::INFO));

        let bad = filter_from("loud please");
        assert!(bad.would_enable("mde_offboard", &tracing::Level::INFO));
        assert!(!bad.would_enable("mde_offboard", &tracing::Level::DEBUG));
    }
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// I1: a directive naming a field is more specific than the cap in
    /// `Targets`; the raw event and the SDK's request bodies stay out all
    /// the same.
    #[test]
    fn no_setting_logs_the_raw_event_or_a_transmitted_request() {
        for setting in [
            "trace",
            "lambda_runtime::layers::api_response[{body}]=trace",
            "aws_smithy_runtime::client::orchestrator[{request}]=trace,trace",
        ] {
            let buf = Buf::default();
            tracing::subscriber::with_default(
                subscriber(filter_from(setting), buf.clone()),
                || {
                    tracing::trace!(target: "lambda_runtime::layers::api_response", body = "webhook-signature: v1,SECRET", "raw event");
                    tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", request = "mac=SECRET", "transmitting request");
                    tracing::info!(target: "mde_offboard", "kept");
                },
            );
            let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            assert!(!text.contains("SECRET"), "{setting}: {text}");
            assert!(text.contains("kept"), "{setting}");
        }
    }

    #[test]
    fn lines_carry_powertools_keys_and_span_fields() {
        let buf = Buf::default();
        let sub = tracing_subscriber::registry().with(JsonLayer::new(buf.clone()));
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!(
                "invocation",
                function_request_id = "req-1",
                cold_start = true
            );
            let _g = span.enter();
            tracing::info!(status = "offboard_requested", "device handled");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "device handled");
        assert_eq!(line["service"], "mde-offboard");
        assert_eq!(line["function_request_id"], "req-1");
        assert_eq!(line["cold_start"], true);
        assert_eq!(line["status"], "offboard_requested");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
