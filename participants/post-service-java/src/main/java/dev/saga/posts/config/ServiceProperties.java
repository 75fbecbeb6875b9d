package dev.saga.posts.config;

import java.util.Map;
import java.util.TreeMap;

import org.springframework.boot.context.properties.ConfigurationProperties;

/**
 * The service's settings ({@code APP_…}), with the Rust post service's names and defaults.
 *
 * @param commandsTopic logical topic commands arrive on (the Kafka prefix is added)
 * @param replyTopic    logical reply topic; commands naming another one are dead-lettered
 * @param group         consumer group (the Kafka prefix is added)
 */
@ConfigurationProperties("app")
public record ServiceProperties(Database database, Kafka kafka, Relay relay, Http http,
                                String commandsTopic, String replyTopic, String group) {

    public ServiceProperties {
        database = database == null ? new Database(null, null) : database;
        kafka = kafka == null ? new Kafka(null, null, null, null, null, null, null, null, null, null) : kafka;
        relay = relay == null ? new Relay(null, null, null) : relay;
        http = http == null ? new Http(null) : http;
        commandsTopic = commandsTopic == null ? "post.commands" : commandsTopic;
        replyTopic = replyTopic == null ? "saga.replies" : replyTopic;
        group = group == null ? "post-service" : group;
    }

    /** The deployed name of the command topic. */
    public String commands() {
        return kafka.topic(commandsTopic);
    }

    /** The deployed name of the reply topic. */
    public String replies() {
        return kafka.topic(replyTopic);
    }

    /** The deployed dead-letter topic of the command topic. */
    public String deadLetters() {
        return kafka.topic(commandsTopic + ".dlq");
    }

    /** The deployed consumer group. */
    public String consumerGroup() {
        return kafka.topic(group);
    }

    /** @param createIfMissing create the database at start-up if it does not exist */
    public record Database(String url, Boolean createIfMissing) {
        public static final String DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/saga_posts";

        public Database {
            url = url == null ? DEFAULT_URL : url;
            createIfMissing = createIfMissing == null || createIfMissing;
        }
    }

    /**
     * @param topicPrefix    prepended to every topic and group name
     * @param createTopics   create missing topics at start-up
     * @param instanceId     static group membership ({@code group.instance.id})
     * @param client         extra client properties, {@code _} read as {@code .}
     */
    public record Kafka(String brokers, String topicPrefix, Boolean createTopics, Integer partitions,
                        Integer replication, String instanceId, Map<String, String> client,
                        Map<String, String> consumer, Map<String, String> producer, Long unreadyAfterMs) {
        public static final String DEFAULT_BROKERS = "127.0.0.1:9092";

        public Kafka {
            brokers = brokers == null ? DEFAULT_BROKERS : brokers;
            topicPrefix = topicPrefix == null ? "" : topicPrefix;
            createTopics = createTopics == null || createTopics;
            partitions = partitions == null ? 8 : partitions;
            replication = replication == null ? 1 : replication;
            client = dotted(client);
            consumer = dotted(consumer);
            producer = dotted(producer);
            unreadyAfterMs = unreadyAfterMs == null ? 15_000L : unreadyAfterMs;
        }

        public String topic(String name) {
            return topicPrefix + name;
        }

        private static Map<String, String> dotted(Map<String, String> raw) {
            Map<String, String> out = new TreeMap<>();
            if (raw != null) {
                raw.forEach((k, v) -> out.put(k.replace('_', '.').replace('-', '.'), v));
            }
            return out;
        }
    }

    /**
     * @param batchSize      most rows read and published at once
     * @param pollIntervalMs how often the relay looks without a notification, and for free lanes
     */
    public record Relay(Boolean enabled, Integer batchSize, Long pollIntervalMs) {
        public Relay {
            enabled = enabled == null || enabled;
            batchSize = batchSize == null ? 500 : batchSize;
            pollIntervalMs = pollIntervalMs == null ? 500L : pollIntervalMs;
        }
    }

    /** @param listen where /metrics, /healthz and /readyz are served */
    public record Http(String listen) {
        public static final String DEFAULT_LISTEN = "127.0.0.1:8082";

        public Http {
            listen = listen == null ? DEFAULT_LISTEN : listen;
        }
    }
}
