package dev.saga.posts.protocol;

/** Record header names of the saga protocol (proto/src/lib.rs, {@code headers}). */
public final class ProtocolHeaders {
    public static final String MESSAGE_ID = "message-id";
    public static final String SAGA_ID = "saga-id";
    public static final String SAGA_TYPE = "saga-type";
    public static final String COMMAND_TYPE = "command-type";
    public static final String PHASE = "phase";
    public static final String ATTEMPT = "attempt";
    public static final String CONTENT_TYPE = "content-type";
    public static final String REPLY_CONTENT_TYPE = "application/x-protobuf; messageType=saga.v1.ReplyEnvelope";

    public static final String DLQ_REASON = "dlq-reason";
    public static final String DLQ_SOURCE_TOPIC = "dlq-source-topic";
    public static final String DLQ_SOURCE_PARTITION = "dlq-source-partition";
    public static final String DLQ_SOURCE_OFFSET = "dlq-source-offset";

    private ProtocolHeaders() {
    }
}
