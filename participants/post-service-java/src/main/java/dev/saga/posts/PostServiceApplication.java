package dev.saga.posts;

import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.context.properties.ConfigurationPropertiesScan;

/**
 * The post service as a Spring Boot participant of the saga protocol (docs/PARTICIPANT_PROTOCOL.md):
 * author replicas of users and their posts, in a PostgreSQL database of its own, driven by
 * {@code CreateAuthor} / {@code DeleteAuthor} and {@code CreatePost} / {@code DeletePost} commands
 * from {@code post.commands}. A drop-in for the Rust {@code post-service}: same topics, schema and
 * {@code APP_…} settings.
 *
 * <p>Layout: {@code config} (settings from {@code APP_…}, Kafka, database), {@code protocol} (the
 * saga.v1 envelopes), {@code participant} (the inbox protocol: listener, processor, inbox),
 * {@code posts} (the business rules), {@code outbox} (reply outbox and its relay),
 * {@code telemetry} (OpenTelemetry), {@code web} (health and readiness).
 */
@SpringBootApplication
@ConfigurationPropertiesScan
public class PostServiceApplication {
    public static void main(String[] args) {
        SpringApplication.run(PostServiceApplication.class, args);
    }
}
