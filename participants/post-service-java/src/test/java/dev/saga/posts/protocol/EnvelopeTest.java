package dev.saga.posts.protocol;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.util.UUID;
import java.util.function.UnaryOperator;

import org.junit.jupiter.api.Test;

import com.fasterxml.jackson.databind.ObjectMapper;

import saga.v1.Messages.CommandEnvelope;
import saga.v1.Messages.Outcome;
import saga.v1.Messages.ReplyEnvelope;

/** Decoding commands and encoding replies as saga_proto::envelope does (the same dead-letter reasons). */
class EnvelopeTest {

    private final ObjectMapper json = new ObjectMapper();
    private final UUID saga = UUID.randomUUID();

    private byte[] command(UnaryOperator<CommandEnvelope.Builder> change) {
        CommandEnvelope.Builder b = CommandEnvelope.newBuilder()
                .setMessageId("m-1")
                .setSagaId(saga.toString())
                .setSagaType("register_user")
                .setDefinitionVersion(1)
                .setStepIndex(1)
                .setStepName("create_author")
                .setAttempt(3)
                .setPhaseValue(1)
                .setCommandType("CreateAuthor")
                .setPayloadJson("{\"user_id\":\"" + UUID.randomUUID() + "\",\"name\":\"Ann\",\"n\":1}")
                .setCausationId("c-1")
                .setIdempotencyKey(saga + "/1/action")
                .setReplyTopic("saga.replies");
        return change.apply(b).build().toByteArray();
    }

    private String poison(byte[] bytes) {
        try {
            Command.decode(bytes, json);
        } catch (PoisonCommandException e) {
            return e.getMessage();
        }
        throw new AssertionError("decoded: expected poison");
    }

    @Test
    void a_command_decodes_and_its_fields_read() {
        Command cmd = Command.decode(command(b -> b), json);
        assertThat(cmd.sagaId()).isEqualTo(saga);
        assertThat(cmd.phase()).isEqualTo(Phase.ACTION);
        assertThat(cmd.attempt()).isEqualTo(3);
        assertThat(cmd.text("name")).isEqualTo("Ann");
        assertThat(cmd.uuid("user_id")).isNotNull();
        assertThat(cmd.optionalText("body")).isEmpty();
        assertThatThrownBy(() -> cmd.text("n")).isInstanceOf(CommandRefused.class).hasMessageContaining("`n`");
        assertThatThrownBy(() -> cmd.uuid("name")).isInstanceOf(CommandRefused.class).hasMessageContaining("not a UUID");
    }

    @Test
    void malformed_commands_are_poison_with_the_reason() {
        assertThat(poison(null)).isEqualTo("empty record: expected a saga.v1.CommandEnvelope");
        assertThat(poison(new byte[] {(byte) 0x0a, (byte) 0xff, (byte) 0xff})).startsWith("not a saga.v1.CommandEnvelope");
        assertThat(poison(command(b -> b.setPhaseValue(0)))).isEqualTo("phase: 0 is not action or compensation");
        assertThat(poison(command(b -> b.setSagaId("nope")))).isEqualTo("saga_id: `nope` is not a UUID");
        assertThat(poison(command(b -> b.setCommandType("")))).isEqualTo("command_type: empty");
        assertThat(poison(command(b -> b.setPayloadJson("[1]")))).isEqualTo("payload_json: not a JSON object");
        assertThat(poison(command(b -> b.setPayloadJson("{")))).startsWith("payload_json: not JSON");
    }

    @Test
    void a_reply_answers_its_command_with_the_incoming_attempt() throws Exception {
        Command cmd = Command.decode(command(b -> b), json);
        Reply ok = Reply.success(cmd, "post-service", "{\"author_id\":\"a\"}");
        ReplyEnvelope env = ReplyEnvelope.parseFrom(ok.encode());
        assertThat(env.getAttempt()).isEqualTo(3);
        assertThat(env.getCausationId()).isEqualTo("m-1");
        assertThat(env.getMessageId()).isNotEqualTo("m-1");
        assertThat(UUID.fromString(env.getMessageId()).version()).isEqualTo(7);
        assertThat(env.getOutcome()).isEqualTo(Outcome.OUTCOME_SUCCESS);
        assertThat(env.getSagaId()).isEqualTo(saga.toString());
        assertThat(ok.headers()).containsEntry("phase", "action").containsEntry("attempt", "3")
                .containsEntry("content-type", "application/x-protobuf; messageType=saga.v1.ReplyEnvelope");

        ReplyEnvelope refused = ReplyEnvelope.parseFrom(Reply.businessFailure(cmd, "post-service", "no").encode());
        assertThat(refused.getOutcome()).isEqualTo(Outcome.OUTCOME_BUSINESS_FAILURE);
        assertThat(refused.getReason()).isEqualTo("no");
        assertThat(refused.getPayloadJson()).isEmpty();
    }
}
