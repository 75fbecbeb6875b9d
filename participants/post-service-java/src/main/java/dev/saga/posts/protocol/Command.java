package dev.saga.posts.protocol;

import java.util.Optional;
import java.util.UUID;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.google.protobuf.InvalidProtocolBufferException;

import saga.v1.Messages.CommandEnvelope;

/**
 * A decoded {@code saga.v1.CommandEnvelope}, with typed access to its payload (the saga context).
 * Decoding checks what the Rust side checks ({@code saga_proto::envelope::Command::decode}); a
 * failure's message is the dead-letter reason.
 */
public record Command(String messageId, UUID sagaId, String sagaType, int definitionVersion, int stepIndex,
                      String stepName, int attempt, Phase phase, String commandType, ObjectNode payload,
                      String causationId, String idempotencyKey, String replyTopic, long deadlineUnixMs) {

    public static Command decode(byte[] bytes, ObjectMapper json) {
        if (bytes == null) {
            throw new PoisonCommandException("empty record: expected a saga.v1.CommandEnvelope");
        }
        CommandEnvelope env;
        try {
            env = CommandEnvelope.parseFrom(bytes);
        } catch (InvalidProtocolBufferException e) {
            throw new PoisonCommandException("not a saga.v1.CommandEnvelope: " + e.getMessage());
        }
        UUID sagaId = parseSagaId(env.getSagaId());
        Phase phase = Phase.fromWire(env.getPhaseValue());
        if (env.getCommandType().isEmpty()) {
            throw new PoisonCommandException("command_type: empty");
        }
        JsonNode payload;
        try {
            payload = json.readTree(env.getPayloadJson());
        } catch (Exception e) {
            throw new PoisonCommandException("payload_json: not JSON: " + e.getMessage());
        }
        if (payload == null || !payload.isObject()) {
            throw new PoisonCommandException("payload_json: not a JSON object");
        }
        return new Command(env.getMessageId(), sagaId, env.getSagaType(), env.getDefinitionVersion(),
                env.getStepIndex(), env.getStepName(), env.getAttempt(), phase, env.getCommandType(),
                (ObjectNode) payload, env.getCausationId(), env.getIdempotencyKey(), env.getReplyTopic(),
                env.getDeadlineUnixMs());
    }

    private static UUID parseSagaId(String text) {
        try {
            if (text.length() == 36) {
                return UUID.fromString(text);
            }
        } catch (IllegalArgumentException e) {
            // reported below
        }
        String shown = text.codePoints().limit(64)
                .collect(StringBuilder::new, StringBuilder::appendCodePoint, StringBuilder::append).toString();
        throw new PoisonCommandException("saga_id: `" + shown + "` is not a UUID");
    }

    /** A required string field of the payload. */
    public String text(String field) {
        JsonNode v = payload.get(field);
        if (v == null || !v.isTextual()) {
            throw new CommandRefused("payload field `" + field + "` is missing or not a string");
        }
        return v.textValue();
    }

    /** An optional string field (absent or null is empty). */
    public Optional<String> optionalText(String field) {
        JsonNode v = payload.get(field);
        if (v == null || v.isNull()) {
            return Optional.empty();
        }
        if (!v.isTextual()) {
            throw new CommandRefused("payload field `" + field + "` is not a string");
        }
        return Optional.of(v.textValue());
    }

    /** A required UUID field. */
    public UUID uuid(String field) {
        String text = text(field);
        try {
            if (text.length() == 36) {
                return UUID.fromString(text);
            }
        } catch (IllegalArgumentException e) {
            // reported below
        }
        throw new CommandRefused("payload field `" + field + "` is not a UUID");
    }
}
