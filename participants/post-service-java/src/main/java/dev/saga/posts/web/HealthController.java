package dev.saga.posts.web;

import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.AdminClient;
import org.springframework.http.ResponseEntity;
import org.springframework.jdbc.core.JdbcTemplate;
import org.springframework.kafka.config.KafkaListenerEndpointRegistry;
import org.springframework.kafka.core.KafkaAdmin;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.RestController;

import dev.saga.posts.config.ServiceProperties;
import dev.saga.posts.outbox.OutboxRelay;

/**
 * {@code /healthz} (the process is alive) and {@code /readyz} (503 with the reasons unless the
 * database and the brokers answer, the command consumer holds partitions and the relay can
 * publish), as the Rust services serve them; {@code /metrics} is Micrometer's Prometheus page.
 */
@RestController
public class HealthController implements AutoCloseable {

    private final JdbcTemplate jdbc;
    private final AdminClient admin;
    private final KafkaListenerEndpointRegistry listeners;
    private final OutboxRelay relay;
    private final Duration unreadyAfter;

    public HealthController(JdbcTemplate jdbc, KafkaAdmin kafkaAdmin, KafkaListenerEndpointRegistry listeners,
                            OutboxRelay relay, ServiceProperties app) {
        this.jdbc = jdbc;
        this.admin = AdminClient.create(kafkaAdmin.getConfigurationProperties());
        this.listeners = listeners;
        this.relay = relay;
        this.unreadyAfter = Duration.ofMillis(app.kafka().unreadyAfterMs());
    }

    @GetMapping("/healthz")
    public String healthz() {
        return "ok\n";
    }

    @GetMapping("/readyz")
    public ResponseEntity<String> readyz() {
        List<String> problems = new ArrayList<>();
        try {
            jdbc.queryForObject("SELECT 1", Integer.class);
        } catch (RuntimeException e) {
            problems.add("database: " + e.getMessage());
        }
        try {
            admin.describeCluster().nodes().get(3, TimeUnit.SECONDS);
        } catch (Exception e) {
            problems.add("kafka: the brokers do not answer");
        }
        var container = listeners.getListenerContainer("commands");
        if (container == null || container.getAssignedPartitions() == null || container.getAssignedPartitions().isEmpty()) {
            problems.add("command consumer: no partitions assigned");
        }
        Instant failing = relay.failingSince();
        if (failing != null && failing.plus(unreadyAfter).isBefore(Instant.now())) {
            problems.add("outbox relay: publishing fails since " + failing);
        }
        if (problems.isEmpty()) {
            return ResponseEntity.ok("ready\n");
        }
        return ResponseEntity.status(503).body(String.join("\n", problems) + "\n");
    }

    @Override
    public void close() {
        admin.close(Duration.ofSeconds(2));
    }

}
