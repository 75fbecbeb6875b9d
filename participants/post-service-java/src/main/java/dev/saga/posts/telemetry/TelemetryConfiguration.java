package dev.saga.posts.telemetry;

import java.util.HashMap;
import java.util.Map;

import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;

import io.opentelemetry.sdk.OpenTelemetrySdk;
import io.opentelemetry.sdk.autoconfigure.AutoConfiguredOpenTelemetrySdk;

/**
 * OpenTelemetry, configured by the standard {@code OTEL_…} variables like the Rust services: spans
 * are exported over OTLP/gRPC when {@code OTEL_EXPORTER_OTLP_ENDPOINT} (or the traces endpoint) is
 * set, never otherwise; the service name defaults to {@code post-service}; only W3C trace context
 * is propagated. Spans are created either way, so the trace context always flows on.
 */
@Configuration(proxyBeanMethods = false)
public class TelemetryConfiguration {

    @Bean(destroyMethod = "")
    public OpenTelemetrySdk openTelemetry() {
        Map<String, String> defaults = new HashMap<>();
        boolean endpoint = set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        defaults.put("otel.traces.exporter", endpoint ? "otlp" : "none");
        defaults.put("otel.metrics.exporter", "none");
        defaults.put("otel.logs.exporter", "none");
        defaults.put("otel.exporter.otlp.protocol", "grpc");
        defaults.put("otel.service.name", "post-service");
        defaults.put("otel.propagators", "tracecontext");
        return AutoConfiguredOpenTelemetrySdk.builder()
                .addPropertiesSupplier(() -> defaults)
                .disableShutdownHook()
                .build()
                .getOpenTelemetrySdk();
    }

    /** Flushes buffered spans for at most 5 s when the service stops. */
    @Bean
    public org.springframework.beans.factory.DisposableBean telemetryShutdown(OpenTelemetrySdk sdk) {
        return () -> sdk.shutdown().join(5, java.util.concurrent.TimeUnit.SECONDS);
    }

    private static boolean set(String name) {
        String v = System.getenv(name);
        return v != null && !v.isBlank();
    }
}
