package dev.saga.posts.audit;

import java.sql.ResultSet;
import java.sql.SQLException;
import java.time.format.DateTimeFormatter;
import java.util.List;
import java.util.UUID;
import java.util.function.Supplier;

import org.springframework.jdbc.core.JdbcTemplate;
import org.springframework.stereotype.Repository;
import org.springframework.transaction.PlatformTransactionManager;
import org.springframework.transaction.support.TransactionTemplate;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

import dev.saga.posts.audit.AuditPages.DomainFinding;
import dev.saga.posts.audit.AuditPages.FactsPage;
import dev.saga.posts.audit.AuditPages.LedgerEntry;
import dev.saga.posts.audit.AuditPages.LedgerPage;
import dev.saga.posts.audit.AuditPages.UnclaimedPage;
import dev.saga.posts.audit.AuditParameters.Cursor;
import dev.saga.posts.audit.AuditParameters.FactsQuery;
import dev.saga.posts.audit.AuditParameters.LedgerQuery;
import dev.saga.posts.audit.AuditParameters.UnclaimedQuery;
import dev.saga.posts.config.ServiceProperties;
import dev.saga.posts.participant.CommandProcessor;
import dev.saga.posts.posts.PostAudit;

/**
 * The inbox as the orchestrator's consistency audit reads it (the Rust kit's
 * {@code participants/kit/src/audit.rs}): pages of inbox records in (saga id, step, phase)
 * order — the inbox's primary key, so a page is one index range scan — each with the post
 * service's own findings about it ({@link PostAudit}), every read in a read-only transaction.
 */
@Repository
public class AuditLedger {

    /** The reply field of a recorded no-op compensation (its action was never applied). */
    static final String NOOP_COMPENSATION = "skipped";

    private final JdbcTemplate jdbc;
    private final TransactionTemplate readOnly;
    private final ObjectMapper json;
    private final PostAudit domain;
    private final String commandsTopic;

    public AuditLedger(JdbcTemplate jdbc, PlatformTransactionManager transactions, ObjectMapper json, PostAudit domain,
                       ServiceProperties app) {
        this.jdbc = jdbc;
        this.readOnly = new TransactionTemplate(transactions);
        this.readOnly.setReadOnly(true);
        this.json = json;
        this.domain = domain;
        this.commandsTopic = app.commandsTopic();
    }

    /** An inbox record the ledger cannot express (a 500: the table holds what the protocol never writes). */
    public static final class CorruptRecord extends RuntimeException {
        CorruptRecord(String message) {
            super(message);
        }
    }

    /** A ledger entry as the domain checks see it: {@code undone} if the inbox also records its step's successful compensation. */
    public record AuditedEntry(LedgerEntry entry, boolean undone) {

        /** A succeeded action of {@code commandType} whose effect should still be there. */
        public boolean holds(String commandType) {
            return "action".equals(entry.phase()) && entry.commandType().equals(commandType)
                    && "succeeded".equals(entry.outcome()) && !undone;
        }

        public DomainFinding finding(String check, String message) {
            return new DomainFinding(entry.sagaId(), entry.step(), entry.phase(), check, message);
        }
    }

    /** One page of {@code GET /audit/ledger}, with the domain's findings about its entries. */
    public LedgerPage page(LedgerQuery q) {
        return inReadOnly(() -> {
            Cursor after = q.after();
            List<AuditedEntry> audited = jdbc.query(
                    "SELECT i.saga_id, i.step_index, i.phase, i.command_type, i.outcome, i.reason, i.reply::text AS reply, "
                            + "i.message_id, i.duplicates, i.created_at, "
                            + "(i.phase = 'action' AND EXISTS (SELECT 1 FROM inbox c WHERE c.saga_id = i.saga_id "
                            + "AND c.step_index = i.step_index AND c.phase = 'compensation' AND c.outcome = 'success')) AS undone "
                            + "FROM inbox i "
                            + "WHERE i.saga_id >= ? AND (CAST(? AS uuid) IS NULL OR i.saga_id < ?) "
                            + "AND (CAST(? AS uuid) IS NULL OR i.saga_id <= ?) "
                            + "AND (i.saga_id, i.step_index, i.phase) > (?, ?, ?) "
                            + "ORDER BY i.saga_id, i.step_index, i.phase LIMIT ?",
                    (rs, n) -> entry(rs),
                    q.window().fromId(), q.window().untilId(), q.window().untilId(), q.through(), q.through(),
                    // Without a cursor, start before the window's first saga's first record.
                    after == null ? q.window().fromId() : after.sagaId(),
                    after == null ? -1 : (int) Math.min(after.step(), Integer.MAX_VALUE),
                    after == null ? "" : after.phase().text(),
                    q.limit());
            List<DomainFinding> findings = domain.check(audited);
            List<LedgerEntry> entries = audited.stream().map(AuditedEntry::entry).toList();
            String next = null;
            if (entries.size() == q.limit()) {
                LedgerEntry last = entries.get(entries.size() - 1);
                next = last.sagaId() + "/" + last.step() + "/" + last.phase();
            }
            return new LedgerPage(PostAudit.SERVICE, commandsTopic, entries, findings, next);
        });
    }

    /** {@code GET /audit/unclaimed}: the domain's effects created in the window that no inbox record claims. */
    public UnclaimedPage unclaimed(UnclaimedQuery q) {
        return inReadOnly(() -> {
            // The checks anti-join a table with the inbox on a value inside the recorded reply, which
            // no index serves; on tables not yet analyzed PostgreSQL picks a nested loop that scans
            // the whole inbox per row (18 s a page after 15,000 sagas). As the Rust kit does.
            jdbc.execute("SET LOCAL enable_nestloop = off");
            return domain.unclaimed(q);
        });
    }

    /** {@code GET /audit/facts/{set}}. */
    public FactsPage facts(String set, FactsQuery q) {
        requireFactSet(set);
        return inReadOnly(() -> domain.facts(set, q));
    }

    /** An unknown fact set is a 404 naming it and the sets there are (the Rust kit's words). */
    public static void requireFactSet(String set) {
        if (!PostAudit.FACT_SETS.contains(set)) {
            throw new AuditParameters.BadRequest(404, PostAudit.SERVICE + " publishes no fact set `"
                    + AuditParameters.clip(set, 60) + "` (it publishes: " + String.join(", ", PostAudit.FACT_SETS) + ")");
        }
    }

    private <T> T inReadOnly(Supplier<T> work) {
        return readOnly.execute(status -> {
            jdbc.execute("SET TRANSACTION READ ONLY");
            return work.get();
        });
    }

    private AuditedEntry entry(ResultSet rs) throws SQLException {
        UUID saga = rs.getObject("saga_id", UUID.class);
        int step = rs.getInt("step_index");
        String phase = rs.getString("phase");
        String at = saga + "/" + step + "/" + phase;
        if (!"action".equals(phase) && !"compensation".equals(phase)) {
            throw new CorruptRecord("inbox record " + at + ": `" + phase + "` is not a phase (action or compensation)");
        }
        if (step < 0) {
            throw new CorruptRecord("inbox record " + at + ": negative step index");
        }
        JsonNode reply = null;
        String replyText = rs.getString("reply");
        if (replyText != null) {
            try {
                reply = json.readTree(replyText);
            } catch (JsonProcessingException e) {
                throw new CorruptRecord("inbox record " + at + ": the reply is not JSON");
            }
        }
        String reason = rs.getString("reason");
        String outcome = outcome(rs.getString("outcome"), phase, reason, reply);
        if (outcome == null) {
            throw new CorruptRecord("inbox record " + at + ": unknown inbox outcome `" + rs.getString("outcome") + "`");
        }
        LedgerEntry entry = new LedgerEntry(saga, step, phase, rs.getString("command_type"), outcome, reason, reply,
                rs.getString("message_id"), Math.max(rs.getInt("duplicates"), 0),
                DateTimeFormatter.ISO_INSTANT.format(rs.getTimestamp("created_at").toInstant()));
        return new AuditedEntry(entry, rs.getBoolean("undone"));
    }

    /**
     * The audit's outcome of an inbox row: a success is {@code succeeded}, or
     * {@code noop_compensation} for a compensation whose reply says it skipped; a refusal is
     * {@code business_failure}, or {@code refused_late_action} for an action refused because its
     * compensation came first. Null for an outcome the inbox never records.
     */
    static String outcome(String recorded, String phase, String reason, JsonNode reply) {
        return switch (recorded) {
            case "success" -> "compensation".equals(phase) && reply != null && reply.has(NOOP_COMPENSATION)
                    ? "noop_compensation" : "succeeded";
            case "business_failure" -> "action".equals(phase) && CommandProcessor.LATE_ACTION.equals(reason)
                    ? "refused_late_action" : "business_failure";
            default -> null;
        };
    }
}
