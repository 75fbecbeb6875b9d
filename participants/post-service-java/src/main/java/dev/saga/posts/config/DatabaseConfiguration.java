package dev.saga.posts.config;

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.boot.autoconfigure.flyway.FlywayMigrationStrategy;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;

/**
 * The service's own database: created if missing ({@code APP_DATABASE__CREATE_IF_MISSING}, on by
 * default, like the Rust services), then migrated by Flyway from the Rust post service's own
 * migration files ({@code migrations/post}, packaged into the jar), so the two share one schema.
 */
@Configuration(proxyBeanMethods = false)
public class DatabaseConfiguration {

    private static final Logger log = LoggerFactory.getLogger(DatabaseConfiguration.class);

    @Bean
    FlywayMigrationStrategy createThenMigrate(ServiceProperties app) {
        return flyway -> {
            if (app.database().createIfMissing()) {
                createIfMissing(AppEnvironment.JdbcTarget.parse(app.database().url()));
            }
            flyway.migrate();
        };
    }

    private static void createIfMissing(AppEnvironment.JdbcTarget target) {
        if (target.database() == null) {
            return;
        }
        Properties props = new Properties();
        props.setProperty("user", target.user());
        if (target.password() != null) {
            props.setProperty("password", target.password());
        }
        try (Connection c = DriverManager.getConnection(target.serverUrl(), props);
             PreparedStatement q = c.prepareStatement("SELECT 1 FROM pg_database WHERE datname = ?")) {
            q.setString(1, target.database());
            try (ResultSet rs = q.executeQuery()) {
                if (rs.next()) {
                    return;
                }
            }
            try (Statement s = c.createStatement()) {
                s.execute("CREATE DATABASE \"" + target.database().replace("\"", "\"\"") + "\"");
                log.info("created database {}", target.database());
            }
        } catch (SQLException e) {
            if ("42P04".equals(e.getSQLState())) {
                return; // created meanwhile by someone else
            }
            throw new IllegalStateException("could not create database " + target.database() + ": " + e.getMessage(), e);
        }
    }
}
