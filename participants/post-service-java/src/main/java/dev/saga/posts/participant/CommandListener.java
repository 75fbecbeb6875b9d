package dev.saga.posts.participant;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.kafka.annotation.KafkaListener;
import org.springframework.stereotype.Component;

import com.fasterxml.jackson.databind.ObjectMapper;

import dev.saga.posts.config.ServiceProperties;
import dev.saga.posts.posts.PostCommands;
import dev.saga.posts.protocol.Command;
import dev.saga.posts.protocol.PoisonCommandException;
import dev.saga.posts.telemetry.Tracing;
import io.micrometer.core.instrument.MeterRegistry;
import io.micrometer.core.instrument.Timer;
import io.opentelemetry.api.trace.Span;
import io.opentelemetry.api.trace.SpanKind;
import io.opentelemetry.api.trace.StatusCode;
import io.opentelemetry.context.Scope;

/**
 * Consumes {@code post.commands}: decodes each record (a record that can never be processed throws
 * {@link PoisonCommandException} and is dead-lettered by the container's error handler) and hands
 * the command to the {@link CommandProcessor} under a consumer span that continues the trace the
 * orchestrator sent. The offset is committed by the container after this returns — after the
 * transaction committed.
 */
@Component
public class CommandListener {

    private static final Logger log = LoggerFactory.getLogger(CommandListener.class);

    private final CommandProcessor processor;
    private final ServiceProperties app;
    private final ObjectMapper json;
    private final Tracing tracing;
    private final MeterRegistry meters;

    public CommandListener(CommandProcessor processor, ServiceProperties app, ObjectMapper json, Tracing tracing,
                           MeterRegistry meters) {
        this.processor = processor;
        this.app = app;
        this.json = json;
        this.tracing = tracing;
        this.meters = meters;
    }

    @KafkaListener(id = "commands", idIsGroup = false, topics = "#{__listener.commandsTopic()}")
    public void onCommand(ConsumerRecord<String, byte[]> record) {
        Span consume = tracing.tracer().spanBuilder("process " + record.topic())
                .setParent(tracing.extract(record.headers()))
                .setSpanKind(SpanKind.CONSUMER)
                .setAttribute("messaging.system", "kafka")
                .setAttribute("messaging.destination.name", record.topic())
                .setAttribute("messaging.kafka.partition", record.partition())
                .setAttribute("messaging.kafka.offset", record.offset())
                .startSpan();
        try (Scope ignored = consume.makeCurrent()) {
            Command cmd = accept(record.value());
            consume.setAttribute("saga_id", cmd.sagaId().toString());
            handle(cmd);
        } catch (RuntimeException e) {
            consume.setStatus(StatusCode.ERROR, String.valueOf(e.getMessage()));
            throw e;
        } finally {
            consume.end();
        }
    }

    /** The deployed command topic. */
    public String commandsTopic() {
        return app.commands();
    }

    /** Decodes a command this deployment can process; anything else is poison. */
    Command accept(byte[] value) {
        Command cmd = Command.decode(value, json);
        if (!PostCommands.handles(cmd.commandType())) {
            throw new PoisonCommandException(
                    CommandProcessor.PARTICIPANT + " does not handle command type `" + cmd.commandType() + "`");
        }
        if (!cmd.replyTopic().equals(app.replies())) {
            throw new PoisonCommandException("reply_topic `" + cmd.replyTopic()
                    + "` is not this deployment's reply topic `" + app.replies() + "`");
        }
        return cmd;
    }

    private void handle(Command cmd) {
        Span span = tracing.tracer().spanBuilder("handle " + cmd.commandType())
                .setAttribute("saga_id", cmd.sagaId().toString())
                .setAttribute("step", cmd.stepIndex())
                .setAttribute("phase", cmd.phase().text())
                .setAttribute("command", cmd.commandType())
                .setAttribute("attempt", cmd.attempt())
                .startSpan();
        Timer.Sample timer = Timer.start(meters);
        try (Scope ignored = span.makeCurrent()) {
            CommandProcessor.Processed p = processor.process(cmd, app.replies());
            span.setAttribute("outcome", p.label());
            String[] tags = {"service", CommandProcessor.PARTICIPANT, "command", cmd.commandType(),
                    "phase", cmd.phase().text(), "outcome", p.label()};
            meters.counter("participant.commands", tags).increment();
            timer.stop(meters.timer("participant.command.duration", tags));
            if (p.repeat()) {
                log.info("saga {} step {} {} {}: repeated command answered with the recorded outcome",
                        cmd.sagaId(), cmd.stepIndex(), cmd.phase().text(), cmd.commandType());
            } else if (p.decision().applied()) {
                log.info("saga {} step {} {} {}: command applied", cmd.sagaId(), cmd.stepIndex(),
                        cmd.phase().text(), cmd.commandType());
            } else {
                log.info("saga {} step {} {} {}: command rejected: {}", cmd.sagaId(), cmd.stepIndex(),
                        cmd.phase().text(), cmd.commandType(), p.decision().reason());
            }
        } catch (RuntimeException e) {
            span.setStatus(StatusCode.ERROR, String.valueOf(e.getMessage()));
            throw e;
        } finally {
            span.end();
        }
    }
}
