package dev.saga.posts.outbox;

import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;

import org.springframework.jdbc.core.JdbcTemplate;
import org.springframework.stereotype.Repository;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.ObjectMapper;

import dev.saga.posts.telemetry.Tracing;

/**
 * The transactional outbox: a reply is a row written in the transaction that decided it, and the
 * {@link OutboxRelay} publishes it after commit. Nothing is sent to Kafka from the listener.
 */
@Repository
public class Outbox {

    /** Number of lanes; a lane is chosen by hashing the record key, as the Rust relay does. */
    public static final int LANES = 16;

    private final JdbcTemplate jdbc;
    private final ObjectMapper json;
    private final Tracing tracing;

    public Outbox(JdbcTemplate jdbc, ObjectMapper json, Tracing tracing) {
        this.jdbc = jdbc;
        this.json = json;
        this.tracing = tracing;
    }

    /**
     * Writes a message in the caller's transaction, stamped with the current span's trace context
     * so the relay's publish continues the trace of the work that wrote it.
     */
    public void enqueue(String topic, String key, byte[] payload, Map<String, String> headers) {
        Map<String, String> all = new LinkedHashMap<>(headers);
        tracing.injectCurrent(all);
        String headersJson;
        try {
            headersJson = json.writeValueAsString(all);
        } catch (JsonProcessingException e) {
            throw new IllegalStateException(e);
        }
        jdbc.update("INSERT INTO outbox (lane, topic, key, payload, headers) VALUES (?, ?, ?, ?, ?::jsonb)",
                (short) lane(key), topic, key, payload, headersJson);
    }

    /** FNV-1a of the key's bytes, modulo {@link #LANES} (runtime/src/outbox.rs, {@code lane_of}). */
    public static int lane(String key) {
        long h = 0x811c9dc5L;
        for (byte b : key.getBytes(StandardCharsets.UTF_8)) {
            h ^= (b & 0xff);
            h = (h * 0x01000193L) & 0xffffffffL;
        }
        return (int) (h % LANES);
    }
}
