package dev.saga.posts.config;

import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Locale;
import java.util.Map;

import org.springframework.boot.SpringApplication;
import org.springframework.boot.env.EnvironmentPostProcessor;
import org.springframework.core.Ordered;
import org.springframework.core.env.ConfigurableEnvironment;
import org.springframework.core.env.MapPropertySource;

/**
 * Reads the settings the way every service of the project does: {@code APP_…} environment
 * variables with {@code __} between levels ({@code APP_DATABASE__URL}, {@code APP_KAFKA__BROKERS},
 * {@code APP_HTTP__LISTEN}) become {@code app.database.url} and so on, and the Spring settings
 * that follow from them are derived: the JDBC URL and credentials from the {@code postgres://} URL,
 * the HTTP address and port from {@code host:port}, Kafka's bootstrap servers, JSON logs.
 */
public class AppEnvironment implements EnvironmentPostProcessor, Ordered {

    static final String SOURCE = "appEnvironment";

    @Override
    public void postProcessEnvironment(ConfigurableEnvironment env, SpringApplication application) {
        Map<String, Object> app = fromVariables(System.getenv());
        env.getPropertySources().addFirst(new MapPropertySource(SOURCE + ".variables", app));

        Map<String, Object> derived = new HashMap<>();
        String url = env.getProperty("app.database.url", ServiceProperties.Database.DEFAULT_URL);
        JdbcTarget jdbc = JdbcTarget.parse(url);
        derived.put("spring.datasource.url", jdbc.jdbcUrl());
        derived.put("spring.datasource.username", jdbc.user());
        if (jdbc.password() != null) {
            derived.put("spring.datasource.password", jdbc.password());
        }
        String listen = env.getProperty("app.http.listen", ServiceProperties.Http.DEFAULT_LISTEN);
        int colon = listen.lastIndexOf(':');
        if (colon < 0) {
            throw new IllegalArgumentException("app.http.listen (APP_HTTP__LISTEN) must be host:port, not `" + listen + "`");
        }
        derived.put("server.address", listen.substring(0, colon).replace("[", "").replace("]", ""));
        derived.put("server.port", listen.substring(colon + 1));
        derived.put("spring.kafka.bootstrap-servers",
                env.getProperty("app.kafka.brokers", ServiceProperties.Kafka.DEFAULT_BROKERS));
        if ("json".equalsIgnoreCase(env.getProperty("app.log_format", ""))) {
            derived.put("logging.structured.format.console", "logstash");
        }
        env.getPropertySources().addAfter(SOURCE + ".variables", new MapPropertySource(SOURCE + ".derived", derived));
    }

    /** {@code APP_KAFKA__TOPIC_PREFIX=x} → {@code app.kafka.topic_prefix=x} (relaxed binding takes it from there). */
    static Map<String, Object> fromVariables(Map<String, String> variables) {
        Map<String, Object> out = new HashMap<>();
        variables.forEach((name, value) -> {
            if (name.startsWith("APP_") && !name.equals("APP_CONFIG_FILE")) {
                String key = name.substring(4).toLowerCase(Locale.ROOT).replace("__", ".");
                out.put("app." + key, value);
            }
        });
        return out;
    }

    @Override
    public int getOrder() {
        return Ordered.LOWEST_PRECEDENCE;
    }

    /** A {@code postgres://user:password@host:port/db?params} URL as JDBC wants it. */
    record JdbcTarget(String jdbcUrl, String user, String password, String serverUrl, String database) {
        static JdbcTarget parse(String url) {
            if (url.startsWith("jdbc:")) {
                return new JdbcTarget(url, "postgres", null, url, null);
            }
            URI uri = URI.create(url);
            if (!"postgres".equals(uri.getScheme()) && !"postgresql".equals(uri.getScheme())) {
                throw new IllegalArgumentException("app.database.url (APP_DATABASE__URL) must be a postgres:// URL");
            }
            String user = "postgres";
            String password = null;
            if (uri.getRawUserInfo() != null) {
                String[] parts = uri.getRawUserInfo().split(":", 2);
                user = decode(parts[0]);
                password = parts.length > 1 ? decode(parts[1]) : null;
            }
            String host = uri.getHost() == null ? "127.0.0.1" : uri.getHost();
            int port = uri.getPort() < 0 ? 5432 : uri.getPort();
            String database = uri.getPath() == null || uri.getPath().length() <= 1 ? user : uri.getPath().substring(1);
            String query = uri.getRawQuery() == null ? "" : "?" + uri.getRawQuery();
            String server = "jdbc:postgresql://" + host + ":" + port + "/";
            return new JdbcTarget(server + database + query, user, password, server + "postgres" + query, database);
        }

        private static String decode(String s) {
            return URLDecoder.decode(s, StandardCharsets.UTF_8);
        }
    }
}
