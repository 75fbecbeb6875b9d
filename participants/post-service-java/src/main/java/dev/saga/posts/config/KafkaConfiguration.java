package dev.saga.posts.config;

import java.nio.charset.StandardCharsets;
import java.util.List;

import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.springframework.boot.autoconfigure.kafka.DefaultKafkaConsumerFactoryCustomizer;
import org.springframework.boot.autoconfigure.kafka.DefaultKafkaProducerFactoryCustomizer;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.kafka.core.KafkaAdmin;
import org.springframework.kafka.core.KafkaTemplate;
import org.springframework.kafka.listener.DeadLetterPublishingRecoverer;
import org.springframework.kafka.listener.DefaultErrorHandler;
import org.springframework.util.backoff.ExponentialBackOff;

import dev.saga.posts.protocol.PoisonCommandException;
import dev.saga.posts.protocol.ProtocolHeaders;
import io.micrometer.core.instrument.MeterRegistry;

/**
 * Kafka as the protocol needs it. Consumers commit offsets only after the listener returned, that
 * is after the database transaction committed (Spring's default: auto-commit off, offsets committed
 * per poll batch); a crash in between redelivers, and the inbox answers the repeat. A poison
 * command goes to {@code <topic>.dlq} with the reason in {@code dlq-reason}; anything else that
 * fails (the database is down) is retried with backoff, for ever, and never answered.
 */
@Configuration(proxyBeanMethods = false)
public class KafkaConfiguration {

    @Bean
    DefaultKafkaConsumerFactoryCustomizer consumerSettings(ServiceProperties app) {
        return factory -> {
            var props = new java.util.HashMap<String, Object>();
            props.put(ConsumerConfig.GROUP_ID_CONFIG, app.consumerGroup());
            props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
            props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
            props.put(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG, 10_000);
            if (app.kafka().instanceId() != null && !app.kafka().instanceId().isBlank()) {
                props.put(ConsumerConfig.GROUP_INSTANCE_ID_CONFIG, app.kafka().instanceId());
            }
            props.putAll(app.kafka().client());
            props.putAll(app.kafka().consumer());
            factory.updateConfigs(props);
        };
    }

    @Bean
    DefaultKafkaProducerFactoryCustomizer producerSettings(ServiceProperties app) {
        return factory -> {
            var props = new java.util.HashMap<String, Object>();
            props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
            props.put(ProducerConfig.ACKS_CONFIG, "all");
            props.put(ProducerConfig.LINGER_MS_CONFIG, 2);
            // Kafka requires delivery.timeout.ms >= linger.ms + request.timeout.ms.
            props.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, 15_000);
            props.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, 30_000);
            props.putAll(app.kafka().client());
            props.putAll(app.kafka().producer());
            factory.updateConfigs(props);
        };
    }

    /** The command topic, its dead-letter topic and the reply topic, created if missing (when configured to). */
    @Bean
    KafkaAdmin.NewTopics topics(ServiceProperties app, KafkaAdmin admin) {
        admin.setAutoCreate(app.kafka().createTopics());
        admin.setFatalIfBrokerNotAvailable(false);
        int partitions = app.kafka().partitions();
        short replication = app.kafka().replication().shortValue();
        return new KafkaAdmin.NewTopics(
                new NewTopic(app.commands(), partitions, replication),
                new NewTopic(app.deadLetters(), partitions, replication),
                new NewTopic(app.replies(), partitions, replication));
    }

    @Bean
    DefaultErrorHandler errorHandler(KafkaTemplate<String, byte[]> template, ServiceProperties app, MeterRegistry meters) {
        DeadLetterPublishingRecoverer deadLetters = new DeadLetterPublishingRecoverer(template,
                (record, e) -> new TopicPartition(record.topic() + ".dlq", -1));
        deadLetters.setHeadersFunction((record, e) -> {
            String reason = poison(e) instanceof PoisonCommandException p ? p.getMessage() : String.valueOf(e.getMessage());
            meters.counter("consumer.dead.lettered", "topic", record.topic()).increment();
            return new RecordHeaders(List.of(
                    header(ProtocolHeaders.DLQ_REASON, reason),
                    header(ProtocolHeaders.DLQ_SOURCE_TOPIC, record.topic()),
                    header(ProtocolHeaders.DLQ_SOURCE_PARTITION, Integer.toString(record.partition())),
                    header(ProtocolHeaders.DLQ_SOURCE_OFFSET, Long.toString(record.offset()))));
        });
        deadLetters.excludeHeader(DeadLetterPublishingRecoverer.HeaderNames.HeadersToAdd.EX_STACKTRACE);
        ExponentialBackOff backOff = new ExponentialBackOff(50, 2.0);
        backOff.setMaxInterval(5_000);
        backOff.setMaxElapsedTime(Long.MAX_VALUE); // a transient failure is never given up on
        DefaultErrorHandler handler = new DefaultErrorHandler(deadLetters, backOff);
        handler.addNotRetryableExceptions(PoisonCommandException.class);
        handler.setCommitRecovered(true);
        return handler;
    }

    static Throwable poison(Throwable e) {
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (t instanceof PoisonCommandException) {
                return t;
            }
        }
        return e;
    }

    private static RecordHeader header(String key, String value) {
        return new RecordHeader(key, value.getBytes(StandardCharsets.UTF_8));
    }
}
