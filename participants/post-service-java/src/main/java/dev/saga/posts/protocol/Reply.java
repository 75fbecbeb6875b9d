package dev.saga.posts.protocol;

import java.security.SecureRandom;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.UUID;

import saga.v1.Messages.Outcome;
import saga.v1.Messages.ReplyEnvelope;

/**
 * A participant's answer to one command: the {@code saga.v1.ReplyEnvelope} body and the record
 * headers that repeat its routing fields. It answers with the incoming command's attempt, so the
 * orchestrator accepts a repeat answered from the inbox.
 */
public record Reply(String messageId, Command command, String participant, boolean success, String reason,
                    String payloadJson) {

    private static final SecureRandom RANDOM = new SecureRandom();

    public static Reply success(Command command, String participant, String payloadJson) {
        return new Reply(uuidV7().toString(), command, participant, true, "", payloadJson);
    }

    public static Reply businessFailure(Command command, String participant, String reason) {
        return new Reply(uuidV7().toString(), command, participant, false, reason, "");
    }

    public byte[] encode() {
        return ReplyEnvelope.newBuilder()
                .setMessageId(messageId)
                .setSagaId(command.sagaId().toString())
                .setSagaType(command.sagaType())
                .setStepIndex(command.stepIndex())
                .setAttempt(command.attempt())
                .setPhase(command.phase().wire())
                .setCommandType(command.commandType())
                .setOutcome(success ? Outcome.OUTCOME_SUCCESS : Outcome.OUTCOME_BUSINESS_FAILURE)
                .setReason(reason)
                .setPayloadJson(payloadJson)
                .setCausationId(command.messageId())
                .setParticipant(participant)
                .build()
                .toByteArray();
    }

    /** The routing headers (trace context is added by whoever writes the record). */
    public Map<String, String> headers() {
        Map<String, String> h = new LinkedHashMap<>();
        h.put(ProtocolHeaders.MESSAGE_ID, messageId);
        h.put(ProtocolHeaders.SAGA_ID, command.sagaId().toString());
        h.put(ProtocolHeaders.SAGA_TYPE, command.sagaType());
        h.put(ProtocolHeaders.COMMAND_TYPE, command.commandType());
        h.put(ProtocolHeaders.PHASE, command.phase().text());
        h.put(ProtocolHeaders.ATTEMPT, Integer.toString(command.attempt()));
        h.put(ProtocolHeaders.CONTENT_TYPE, ProtocolHeaders.REPLY_CONTENT_TYPE);
        return h;
    }

    /** A UUIDv7 (time-ordered), like every message id of the project. */
    static UUID uuidV7() {
        long millis = System.currentTimeMillis();
        long high = (millis << 16) | 0x7000L | (RANDOM.nextInt() & 0x0fffL);
        long low = (RANDOM.nextLong() & 0x3fffffffffffffffL) | 0x8000000000000000L;
        return new UUID(high, low);
    }
}
