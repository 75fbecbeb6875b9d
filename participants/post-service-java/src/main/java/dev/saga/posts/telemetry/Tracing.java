package dev.saga.posts.telemetry;

import java.nio.charset.StandardCharsets;
import java.util.Map;
import java.util.stream.StreamSupport;

import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.Headers;
import org.springframework.stereotype.Component;

import io.opentelemetry.api.OpenTelemetry;
import io.opentelemetry.api.trace.Tracer;
import io.opentelemetry.context.Context;
import io.opentelemetry.context.propagation.TextMapGetter;

/**
 * W3C trace context through everything a message passes: Kafka headers in, the outbox row's
 * {@code headers} column, Kafka headers out. With it the saga's one trace continues through this
 * service: {@code process <topic>} (a consumer span continuing the command's {@code traceparent})
 * → {@code handle <command>} → the reply row, stamped → {@code publish <topic>} (the relay) → the
 * orchestrator.
 */
@Component
public class Tracing {

    private static final TextMapGetter<Headers> KAFKA = new TextMapGetter<>() {
        @Override
        public Iterable<String> keys(Headers carrier) {
            return StreamSupport.stream(carrier.spliterator(), false).map(Header::key).toList();
        }

        @Override
        public String get(Headers carrier, String key) {
            Header h = carrier == null ? null : carrier.lastHeader(key);
            return h == null || h.value() == null ? null : new String(h.value(), StandardCharsets.UTF_8);
        }
    };

    private static final TextMapGetter<Map<String, String>> MAP = new TextMapGetter<>() {
        @Override
        public Iterable<String> keys(Map<String, String> carrier) {
            return carrier.keySet();
        }

        @Override
        public String get(Map<String, String> carrier, String key) {
            return carrier == null ? null : carrier.get(key);
        }
    };

    private final OpenTelemetry otel;
    private final Tracer tracer;

    public Tracing(OpenTelemetry otel) {
        this.otel = otel;
        this.tracer = otel.getTracer("post-service");
    }

    public Tracer tracer() {
        return tracer;
    }

    /** The context a Kafka record's headers carry (the root context if none). */
    public Context extract(Headers headers) {
        return otel.getPropagators().getTextMapPropagator().extract(Context.root(), headers, KAFKA);
    }

    /** The context an outbox row's headers carry. */
    public Context extract(Map<String, String> headers) {
        return otel.getPropagators().getTextMapPropagator().extract(Context.root(), headers, MAP);
    }

    /** Writes the current context ({@code traceparent}, {@code tracestate}) into {@code headers}. */
    public void injectCurrent(Map<String, String> headers) {
        otel.getPropagators().getTextMapPropagator().inject(Context.current(), headers, Map::put);
    }
}
