//! W3C trace-context propagation through everything a message passes: gRPC metadata, outbox rows
//! (their `headers` column), Kafka headers. With it, one saga is one trace across the orchestrator
//! and both participants.

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct MapInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapExtractor<'a>(&'a BTreeMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Writes the context of `span` (`traceparent`, `tracestate`) into `headers`.
pub fn inject(span: &tracing::Span, headers: &mut BTreeMap<String, String>) {
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MapInjector(headers)));
}

/// The context of the current span, as headers.
pub fn current_headers() -> BTreeMap<String, String> {
    let mut h = BTreeMap::new();
    inject(&tracing::Span::current(), &mut h);
    h
}

/// Adds the trace context `context` to a message's `headers`, unless they carry one already.
pub fn stamp(headers: &mut BTreeMap<String, String>, context: &BTreeMap<String, String>) {
    for (k, v) in context {
        headers.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

/// Makes the context found in `headers` (if any) the parent of `span`.
pub fn continue_from(span: &tracing::Span, headers: &BTreeMap<String, String>) {
    if headers.contains_key("traceparent") {
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&MapExtractor(headers)));
        let _ = span.set_parent(cx);
    }
}

/// Makes the context of incoming gRPC metadata (if any) the parent of `span`.
pub fn continue_from_grpc(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    if metadata.contains_key("traceparent") {
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&MetadataExtractor(metadata)));
        let _ = span.set_parent(cx);
    }
}
