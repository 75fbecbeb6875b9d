package dev.saga.posts.config;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.util.Map;

import org.junit.jupiter.api.Test;

/** The APP_… settings the Rust services read, as this service reads them. */
class AppEnvironmentTest {

    @Test
    void app_variables_become_app_properties() {
        Map<String, Object> props = AppEnvironment.fromVariables(Map.of(
                "APP_DATABASE__URL", "postgres://x", "APP_KAFKA__TOPIC_PREFIX", "dev.",
                "APP_CONFIG_FILE", "ignored.toml", "PATH", "/bin"));
        assertThat(props).containsOnly(
                Map.entry("app.database.url", "postgres://x"), Map.entry("app.kafka.topic_prefix", "dev."));
    }

    @Test
    void a_postgres_url_becomes_a_jdbc_target() {
        var t = AppEnvironment.JdbcTarget.parse("postgres://saga:p%40ss@db.local:6543/saga_posts?sslmode=require");
        assertThat(t.jdbcUrl()).isEqualTo("jdbc:postgresql://db.local:6543/saga_posts?sslmode=require");
        assertThat(t.user()).isEqualTo("saga");
        assertThat(t.password()).isEqualTo("p@ss");
        assertThat(t.database()).isEqualTo("saga_posts");
        assertThat(t.serverUrl()).isEqualTo("jdbc:postgresql://db.local:6543/postgres?sslmode=require");

        var local = AppEnvironment.JdbcTarget.parse("postgres://postgres@127.0.0.1/conf_posts");
        assertThat(local.jdbcUrl()).isEqualTo("jdbc:postgresql://127.0.0.1:5432/conf_posts");
        assertThat(local.password()).isNull();

        assertThatThrownBy(() -> AppEnvironment.JdbcTarget.parse("mysql://x/y"))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("postgres://");
    }
}
