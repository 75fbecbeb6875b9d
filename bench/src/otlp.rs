//! A real OTLP/gRPC trace receiver: services export their spans to it exactly as they would to a
//! collector or Jaeger, and the caller reads back every span it got. Used by the participant
//! conformance kit (a participant's spans continue the command's trace) and the end-to-end tests.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue as Any, KeyValue};
use tokio_util::sync::CancellationToken;

/// One span as received, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: BTreeMap<String, String>,
}

fn text(v: &Option<Any>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect()
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl Collector {
    fn spans(&self) -> std::sync::MutexGuard<'_, Vec<ReceivedSpan>> {
        // A panic elsewhere while holding the lock leaves the spans intact.
        self.spans.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for rs in request.into_inner().resource_spans {
            let resource = rs.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                });
            }
        }
        self.spans().extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The receiver on a port of its own on 127.0.0.1; stops when dropped.
pub struct Receiver {
    /// `http://127.0.0.1:<port>`: the value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    collector: Collector,
    shutdown: CancellationToken,
}

impl Receiver {
    /// Starts the receiver; the error says why it could not listen.
    pub async fn try_start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OTLP receiver on 127.0.0.1")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let collector = Collector::default();
        let shutdown = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        Ok(Self {
            endpoint,
            collector,
            shutdown,
        })
    }

    /// [`Receiver::try_start`] for tests: panics if it cannot listen.
    pub async fn start() -> Self {
        Self::try_start().await.expect("start the OTLP receiver")
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collector.spans().clone()
    }

    /// The spans received so far in one trace (`trace_id` in hex).
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.collector
            .spans()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The spans of `spans` (one trace) that do not hang off `parent`: those whose parent is neither
/// among `spans` nor `parent` itself. Empty when the whole trace descends from `parent`.
pub fn detached<'a>(spans: &'a [ReceivedSpan], parent: &str) -> Vec<&'a ReceivedSpan> {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    spans
        .iter()
        .filter(|s| !ids.contains(s.parent_span_id.as_str()) && s.parent_span_id != parent)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str) -> ReceivedSpan {
        ReceivedSpan {
            service: "svc".into(),
            name: id.into(),
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn spans_not_under_the_parent_are_detached() {
        let spans = [span("a", "p"), span("b", "a"), span("c", "x"), span("d", "")];
        let detached: Vec<&str> = detached(&spans, "p").iter().map(|s| s.name.as_str()).collect();
        assert_eq!(detached, ["c", "d"]);
        assert!(super::detached(&spans[..2], "p").is_empty());
    }
}
