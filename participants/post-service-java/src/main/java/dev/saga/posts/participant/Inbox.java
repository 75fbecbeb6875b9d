package dev.saga.posts.participant;

import java.util.EnumMap;
import java.util.Map;
import java.util.UUID;

import org.springframework.jdbc.core.JdbcTemplate;
import org.springframework.stereotype.Repository;

import dev.saga.posts.protocol.Command;
import dev.saga.posts.protocol.Phase;

/**
 * The {@code inbox} table: one row per business idempotency key (saga, step, phase) with the
 * recorded outcome, written in the same transaction as the effect and the reply. Every method runs
 * in the caller's transaction.
 */
@Repository
public class Inbox {

    private final JdbcTemplate jdbc;

    public Inbox(JdbcTemplate jdbc) {
        this.jdbc = jdbc;
    }

    /**
     * Serialises work on one (saga, step) with other replicas until the transaction ends, so the
     * action and the compensation of a step never race (the same lock key as the Rust kit).
     */
    public void lock(UUID saga, int step) {
        jdbc.queryForList("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", saga + "/" + step);
    }

    /** The outcomes recorded for both phases of (saga, step). */
    public Map<Phase, Decision> recorded(UUID saga, int step) {
        Map<Phase, Decision> book = new EnumMap<>(Phase.class);
        jdbc.query("SELECT phase, outcome, reason, reply::text AS reply FROM inbox WHERE saga_id = ? AND step_index = ?",
                rs -> {
                    Phase phase = Phase.fromText(rs.getString("phase"));
                    Decision d = "success".equals(rs.getString("outcome"))
                            ? Decision.applied(rs.getString("reply") == null ? "null" : rs.getString("reply"))
                            : Decision.refused(rs.getString("reason") == null ? "" : rs.getString("reason"));
                    book.put(phase, d);
                }, saga, step);
        return book;
    }

    public void record(Command cmd, Decision decision) {
        jdbc.update("INSERT INTO inbox (saga_id, step_index, phase, command_type, outcome, reason, reply, message_id) "
                        + "VALUES (?, ?, ?, ?, ?, ?, ?::jsonb, ?)",
                cmd.sagaId(), cmd.stepIndex(), cmd.phase().text(), cmd.commandType(), decision.outcome(),
                decision.reason(), decision.payloadJson(), cmd.messageId());
    }

    /** Counts a redelivery or retry answered from the inbox. */
    public void countRepeat(Command cmd) {
        jdbc.update("UPDATE inbox SET duplicates = duplicates + 1 WHERE saga_id = ? AND step_index = ? AND phase = ?",
                cmd.sagaId(), cmd.stepIndex(), cmd.phase().text());
    }
}
