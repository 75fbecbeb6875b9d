//! Logging and tracing set-up shared by every binary.
//!
//! - Level from `RUST_LOG`; `LogFormat::Human` for terminals, `LogFormat::Json` for one JSON object
//!   per line carrying the fields of every enclosing span (`saga_id`, `step`, …) and the OpenTelemetry
//!   `trace_id` / `span_id`.
//! - Spans are exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and `OTEL_TRACES_EXPORTER` is not `none`; the
//!   sampler comes from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, the service name from
//!   `OTEL_SERVICE_NAME` (else the binary's name), the batch settings from `OTEL_BSP_*`.
//! - The export queue is bounded (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048): when the collector is
//!   slow or gone, spans are dropped, never buffered without limit, and counted
//!   (`otel_spans_dropped_total`).
//! - [`Telemetry::shutdown`] flushes within a bounded time.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Readable lines for a terminal.
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Owns the tracer provider; shut it down to flush spans before exiting.
#[must_use = "call shutdown() before exiting, or buffered spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// How much longer than its own timeout [`Telemetry::shutdown`] waits for the SDK to return.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(200);

impl Telemetry {
    /// Flushes and stops span export. Returns as soon as that is done, and at the latest after
    /// `timeout` + 200 ms: the flush runs on a thread of its own that is not joined, so an
    /// exporter that ignores the timeout cannot hold up the exit.
    pub fn shutdown(self, timeout: Duration) {
        let Some(provider) = self.provider else {
            return;
        };
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = provider.shutdown_with_timeout(timeout);
            let _ = done.send(());
        });
        // Ok: flushed; Timeout: given up; Disconnected: the thread ended without sending (panicked).
        let _ = finished.recv_timeout(timeout.saturating_add(SHUTDOWN_GRACE));
    }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

fn export_enabled() -> bool {
    let exporter = std::env::var("OTEL_TRACES_EXPORTER").unwrap_or_default();
    exporter.trim() != "none"
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs the global subscriber (logs + spans) and, when configured, OTLP export. Safe to call
/// more than once in a process: later calls keep the first set-up and return a no-op guard.
pub fn init(service: &'static str, format: LogFormat) -> Telemetry {
    crate::http::metrics(); // count from the start, spans dropped included
    for name in [
        "otel_spans_exported_total",
        "otel_spans_dropped_total",
        "otel_span_export_failures_total",
    ] {
        metrics::counter!(name).increment(0); // every series exists from the start, at 0
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let mut builder = SdkTracerProvider::builder();
    if !env_set("OTEL_SERVICE_NAME") {
        builder = builder.with_resource(Resource::builder().with_service_name(service).build());
    }
    let mut exporting = false;
    if export_enabled() {
        match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
            Ok(exporter) => {
                builder = builder.with_span_processor(CountingProcessor::new(exporter));
                exporting = true;
            }
            Err(e) => eprintln!("OTLP span export disabled: {e}"),
        }
    }
    let provider = builder.build();
    let tracer = provider.tracer(service);
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = JsonWithTrace::default();
    let logs = match format {
        LogFormat::Human => tracing_subscriber::fmt::layer().with_filter(filter()).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(json.clone())
            .with_filter(filter())
            .boxed(),
    };
    // Spans are recorded for tracing at `info` and above regardless of the log level chosen.
    let installed = tracing_subscriber::registry()
        .with(otel.with_filter(EnvFilter::new("info")))
        .with(logs)
        .try_init()
        .is_ok();
    if installed {
        json.attach_current_dispatch();
        opentelemetry::global::set_tracer_provider(provider.clone());
        if exporting {
            tracing::info!(service, "exporting spans over OTLP");
        }
        Telemetry {
            provider: Some(provider),
        }
    } else {
        Telemetry { provider: None }
    }
}

/// The trace and span id of the current span, if it is recording.
pub fn current_ids() -> Option<(String, String)> {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// JSON lines: time, level, target, message and event fields, the fields of every enclosing span
/// (innermost wins), and the trace and span ids.
///
/// A formatter runs inside the dispatch of the event, where tracing refuses to hand out the current
/// dispatcher (re-entrancy), so the dispatcher the OpenTelemetry layer lives in is attached here.
#[derive(Clone, Default)]
struct JsonWithTrace {
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl JsonWithTrace {
    /// Remembers the dispatcher in effect now (call once the subscriber is installed).
    fn attach_current_dispatch(&self) {
        tracing::dispatcher::get_default(|d| {
            let _ = self.dispatch.set(d.downgrade());
        });
    }

    fn ids<S>(
        &self,
        ctx: &FmtContext<'_, S, impl for<'a> FormatFields<'a> + 'static>,
    ) -> Option<(String, String)>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let span = ctx.lookup_current()?;
        let dispatch = self.dispatch.get()?.upgrade()?;
        let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
        let sc = cx.span().span_context().clone();
        sc.is_valid()
            .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
    }
}

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut obj = Map::new();
        obj.insert("timestamp".into(), Value::String(chrono::Utc::now().to_rfc3339()));
        obj.insert(
            "level".into(),
            Value::String(event.metadata().level().to_string()),
        );
        obj.insert(
            "target".into(),
            Value::String(event.metadata().target().to_owned()),
        );
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields)
                {
                    // `otel.name`, `otel.kind`, … steer the exporter; they are not log content.
                    obj.extend(map.into_iter().filter(|(k, _)| !k.starts_with("otel.")));
                }
            }
        }
        let mut visitor = JsonVisitor(&mut obj);
        event.record(&mut visitor);
        if let Some((trace_id, span_id)) = self.ids(ctx) {
            obj.insert("trace_id".into(), Value::String(trace_id));
            obj.insert("span_id".into(), Value::String(span_id));
        }
        writeln!(writer, "{}", Value::Object(obj))
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl tracing::field::Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
}

/// Wraps the SDK's bounded batch processor so that drops are decided — and counted — here: a span
/// is handed on only while fewer than `capacity` spans wait for export; the exporter wrapper frees
/// capacity when a batch is done, exported or not.
#[derive(Debug)]
struct CountingProcessor {
    inner: BatchSpanProcessor,
    waiting: Arc<AtomicUsize>,
    capacity: usize,
}

impl CountingProcessor {
    fn new<E: SpanExporter + 'static>(exporter: E) -> Self {
        let capacity = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n: &usize| *n > 0)
            .unwrap_or(2048);
        let waiting = Arc::new(AtomicUsize::new(0));
        let exporter = CountingExporter {
            inner: exporter,
            waiting: waiting.clone(),
        };
        Self {
            inner: BatchSpanProcessor::builder(exporter).build(),
            waiting,
            capacity,
        }
    }
}

impl SpanProcessor for CountingProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let admitted = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            metrics::gauge!("otel_spans_queued").increment(1.0);
            self.inner.on_end(span);
        } else {
            metrics::counter!("otel_spans_dropped_total").increment(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    waiting: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.waiting
            .fetch_sub(n.min(self.waiting.load(Ordering::Acquire)), Ordering::AcqRel);
        metrics::gauge!("otel_spans_queued").decrement(n as f64);
        match &result {
            Ok(()) => metrics::counter!("otel_spans_exported_total").increment(n as u64),
            Err(_) => metrics::counter!("otel_span_export_failures_total").increment(n as u64),
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// A span processor whose shutdown takes `stall`, whatever timeout it is given.
    #[derive(Debug)]
    struct Stalling(Duration);

    impl SpanProcessor for Stalling {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
        fn on_end(&self, _: SpanData) {}
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            std::thread::sleep(self.0);
            Ok(())
        }
    }

    /// How long `shutdown(timeout)` takes with a processor that needs `stall`.
    fn shutdown_time(stall: Duration, timeout: Duration) -> Duration {
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Stalling(stall))
            .build();
        let started = std::time::Instant::now();
        Telemetry {
            provider: Some(provider),
        }
        .shutdown(timeout);
        started.elapsed()
    }

    #[test]
    fn shutdown_returns_when_the_flush_is_done_and_never_after_its_bound() {
        let quick = shutdown_time(Duration::from_millis(50), Duration::from_secs(10));
        assert!(
            quick >= Duration::from_millis(50) && quick < Duration::from_secs(2),
            "returns once flushed: {quick:?}"
        );
        let stuck = shutdown_time(Duration::from_secs(30), Duration::from_millis(100));
        assert!(
            stuck >= Duration::from_millis(300) && stuck < Duration::from_secs(2),
            "gives up after timeout + 200 ms: {stuck:?}"
        );
    }

    #[test]
    fn json_lines_carry_span_fields_and_trace_ids() {
        let buffer = Buffer::default();
        let provider = SdkTracerProvider::builder().build();
        let json = JsonWithTrace::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(json.clone())
                    .with_writer(buffer.clone()),
            );
        let ids = tracing::subscriber::with_default(subscriber, || {
            json.attach_current_dispatch();
            let saga = tracing::info_span!("saga", saga_id = "01a2-saga", step = 1);
            let _outer = saga.enter();
            let inner = tracing::info_span!(
                "handle",
                otel.name = "handle CreateUser",
                command = "CreateUser",
                step = 2
            );
            let _inner = inner.enter();
            tracing::info!(attempt = 3, "applied");
            let sc = tracing::Span::current().context().span().span_context().clone();
            (sc.trace_id().to_string(), sc.span_id().to_string())
        });
        let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8");
        let line: Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["message"], "applied");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["saga_id"], "01a2-saga");
        assert_eq!(line["command"], "CreateUser");
        assert_eq!(line["step"], 2, "the innermost span wins");
        assert_eq!(line["attempt"], 3);
        assert!(
            line.get("otel.name").is_none(),
            "exporter fields stay out of logs"
        );
        assert_eq!(
            (line["trace_id"].as_str(), line["span_id"].as_str()),
            (Some(ids.0.as_str()), Some(ids.1.as_str()))
        );
        assert_eq!(ids.0.len(), 32);
    }
}
