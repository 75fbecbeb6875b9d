package dev.saga.posts.outbox;

import java.nio.charset.StandardCharsets;
import java.sql.Array;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

import javax.sql.DataSource;

import org.apache.kafka.clients.producer.ProducerRecord;
import org.postgresql.PGConnection;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.context.SmartLifecycle;
import org.springframework.kafka.core.KafkaTemplate;
import org.springframework.stereotype.Component;

import com.fasterxml.jackson.core.type.TypeReference;
import com.fasterxml.jackson.databind.ObjectMapper;

import dev.saga.posts.config.ServiceProperties;
import dev.saga.posts.telemetry.Tracing;
import io.micrometer.core.instrument.Counter;
import io.micrometer.core.instrument.MeterRegistry;
import io.micrometer.core.instrument.Timer;
import io.opentelemetry.api.trace.Span;
import io.opentelemetry.api.trace.SpanKind;
import io.opentelemetry.context.Scope;

/**
 * Publishes committed outbox rows to Kafka, then deletes them; a row is deleted only after the
 * broker acknowledged it (at-least-once; the envelope's message id makes a repeat detectable).
 *
 * <p>Lanes as in the Rust relay: a row's lane is a hash of its key (the saga id), and a relay
 * publishes only the lanes whose session advisory lock {@code (0x0b0c5a6a, lane)} it holds on a
 * connection of its own, so two replicas never publish the same saga's replies at once and a
 * saga's replies leave in the order they were written. The relay wakes on {@code NOTIFY outbox}
 * (the table's trigger) and polls every {@code app.relay.poll-interval-ms} as a fallback.
 */
@Component
public class OutboxRelay implements SmartLifecycle {

    private static final Logger log = LoggerFactory.getLogger(OutboxRelay.class);
    private static final int LOCK_SPACE = 0x0b0c5a6a;

    private final DataSource dataSource;
    private final KafkaTemplate<String, byte[]> kafka;
    private final ObjectMapper json;
    private final Tracing tracing;
    private final ServiceProperties.Relay settings;
    private final Counter published;
    private final Counter publishFailures;
    private final Timer publishLag;
    private volatile boolean running;
    private volatile Instant failingSince;
    private Thread thread;

    public OutboxRelay(DataSource dataSource, KafkaTemplate<String, byte[]> kafka, ObjectMapper json,
                       Tracing tracing, ServiceProperties properties, MeterRegistry meters) {
        this.dataSource = dataSource;
        this.kafka = kafka;
        this.json = json;
        this.tracing = tracing;
        this.settings = properties.relay();
        // The Rust services' names (outbox_published_total, outbox_publish_failures_total,
        // outbox_publish_lag_seconds), so the alerts, the dashboard and loadgen read this service too.
        this.published = Counter.builder("outbox.published").description("Outbox rows published").register(meters);
        this.publishFailures = Counter.builder("outbox.publish.failures")
                .description("Outbox rows the broker did not acknowledge (published again later)").register(meters);
        this.publishLag = Timer.builder("outbox.publish.lag")
                .description("From the row's insert to the broker's acknowledgement")
                .publishPercentileHistogram()
                .register(meters);
    }

    /** Since when deliveries have been failing (for readiness), or null. */
    public Instant failingSince() {
        return failingSince;
    }

    @Override
    public void start() {
        if (!settings.enabled()) {
            return;
        }
        running = true;
        thread = new Thread(this::run, "outbox-relay");
        thread.start();
    }

    @Override
    public void stop() {
        running = false;
        if (thread != null) {
            thread.interrupt();
            try {
                thread.join(5_000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    @Override
    public boolean isRunning() {
        return running;
    }

    /** Stops after the listener containers, so replies they wrote last are still published. */
    @Override
    public int getPhase() {
        return Integer.MIN_VALUE + 1000;
    }

    private void run() {
        while (running) {
            try (Connection session = dataSource.getConnection()) {
                session.setAutoCommit(true);
                try (Statement s = session.createStatement()) {
                    s.execute("SET application_name = 'outbox relay'");
                    s.execute("LISTEN outbox");
                }
                TreeSet<Integer> lanes = new TreeSet<>();
                long lastLaneLook = 0;
                while (running) {
                    if (System.currentTimeMillis() - lastLaneLook >= settings.pollIntervalMs()) {
                        takeFreeLanes(session, lanes);
                        lastLaneLook = System.currentTimeMillis();
                    }
                    int sent = lanes.isEmpty() ? 0 : relayOnce(session, lanes);
                    if (sent < settings.batchSize()) {
                        // Nothing more waiting: sleep until NOTIFY or the poll interval.
                        session.unwrap(PGConnection.class).getNotifications((int) settings.pollIntervalMs().longValue());
                    }
                }
            } catch (SQLException e) {
                markFailing();
                log.warn("outbox relay lost its database session; retrying: {}", e.getMessage());
                pause(1_000);
            } catch (RuntimeException e) {
                markFailing();
                log.warn("outbox relay failed; retrying", e);
                pause(1_000);
            }
        }
    }

    private void takeFreeLanes(Connection session, TreeSet<Integer> lanes) throws SQLException {
        if (lanes.size() == Outbox.LANES) {
            return;
        }
        try (PreparedStatement q = session.prepareStatement(
                "SELECT lane FROM generate_series(0, ?) AS lane WHERE lane <> ALL(?) AND pg_try_advisory_lock(?, lane)")) {
            q.setInt(1, Outbox.LANES - 1);
            q.setArray(2, session.createArrayOf("int4", lanes.toArray()));
            q.setInt(3, LOCK_SPACE);
            try (ResultSet rs = q.executeQuery()) {
                while (rs.next()) {
                    lanes.add(rs.getInt(1));
                }
            }
        }
    }

    private record Row(long id, String topic, String key, byte[] payload, Map<String, String> headers,
                       Instant createdAt) {
    }

    /** Publishes one batch of this relay's lanes and deletes what the broker acknowledged. */
    int relayOnce(Connection session, TreeSet<Integer> lanes) throws SQLException {
        List<Row> rows = new ArrayList<>();
        try (PreparedStatement q = session.prepareStatement(
                "SELECT id, topic, key, payload, headers::text, created_at FROM outbox WHERE lane = ANY(?) ORDER BY id LIMIT ?")) {
            q.setArray(1, session.createArrayOf("int2", lanes.stream().map(Integer::shortValue).toArray()));
            q.setInt(2, settings.batchSize());
            try (ResultSet rs = q.executeQuery()) {
                while (rs.next()) {
                    rows.add(new Row(rs.getLong(1), rs.getString(2), rs.getString(3), rs.getBytes(4), headers(rs.getString(5)),
                            rs.getObject(6, java.time.OffsetDateTime.class).toInstant()));
                }
            }
        }
        if (rows.isEmpty()) {
            failingSince = null;
            return 0;
        }
        List<CompletableFuture<?>> sends = new ArrayList<>(rows.size());
        for (Row row : rows) {
            sends.add(publish(row));
        }
        List<Long> done = new ArrayList<>(rows.size());
        for (int i = 0; i < rows.size(); i++) {
            try {
                sends.get(i).get(30, TimeUnit.SECONDS);
                done.add(rows.get(i).id());
                publishLag.record(Duration.between(rows.get(i).createdAt(), Instant.now()));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                break;
            } catch (Exception e) {
                // Later rows of a lane must not overtake this one: stop here, publish it again.
                markFailing();
                publishFailures.increment();
                log.warn("could not publish an outbox row; it will be published again: {}", rootCause(e));
                break;
            }
        }
        if (!done.isEmpty()) {
            try (PreparedStatement d = session.prepareStatement("DELETE FROM outbox WHERE id = ANY(?)")) {
                Array ids = session.createArrayOf("int8", done.toArray());
                d.setArray(1, ids);
                d.executeUpdate();
            }
            published.increment(done.size());
        }
        if (done.size() == rows.size()) {
            failingSince = null;
        } else {
            pause(500);
        }
        return done.size();
    }

    private CompletableFuture<?> publish(Row row) {
        Span span = tracing.tracer().spanBuilder("publish " + row.topic())
                .setParent(tracing.extract(row.headers()))
                .setSpanKind(SpanKind.PRODUCER)
                .setAttribute("messaging.system", "kafka")
                .setAttribute("messaging.destination.name", row.topic())
                .setAttribute("messaging.message.id", row.headers().getOrDefault("message-id", ""))
                .startSpan();
        try (Scope ignored = span.makeCurrent()) {
            ProducerRecord<String, byte[]> record = new ProducerRecord<>(row.topic(), row.key(), row.payload());
            Map<String, String> headers = new java.util.LinkedHashMap<>(row.headers());
            tracing.injectCurrent(headers); // the consumer continues from this publish
            headers.forEach((k, v) -> record.headers().add(k, v.getBytes(StandardCharsets.UTF_8)));
            return kafka.send(record).whenComplete((ok, error) -> {
                if (error != null) {
                    span.recordException(error);
                }
                span.end();
            });
        } catch (RuntimeException e) {
            span.end();
            return CompletableFuture.failedFuture(e);
        }
    }

    private Map<String, String> headers(String text) {
        try {
            return json.readValue(text, new TypeReference<Map<String, String>>() { });
        } catch (Exception e) {
            return Map.of();
        }
    }

    private static String rootCause(Throwable e) {
        Throwable t = e;
        while (t.getCause() != null && t.getCause() != t) {
            t = t.getCause();
        }
        return t == e ? String.valueOf(e.getMessage()) : e.getMessage() + ": " + t;
    }

    private void markFailing() {
        if (failingSince == null) {
            failingSince = Instant.now();
        }
    }

    private static void pause(long millis) {
        try {
            Thread.sleep(millis);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
