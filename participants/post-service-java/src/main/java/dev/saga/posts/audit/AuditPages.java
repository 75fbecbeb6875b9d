package dev.saga.posts.audit;

import java.util.List;
import java.util.UUID;

import com.fasterxml.jackson.annotation.JsonInclude;
import com.fasterxml.jackson.annotation.JsonPropertyOrder;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.PropertyNamingStrategies;
import com.fasterxml.jackson.databind.annotation.JsonNaming;

/**
 * What the audit endpoints answer, field for field the JSON of {@code saga_proto::ledger}
 * ({@code LedgerPage}, {@code LedgerEntry}, {@code DomainFinding}, {@code UnclaimedPage}) and of
 * the fact sets.
 */
public final class AuditPages {

    private AuditPages() {
    }

    /** One page of {@code GET /audit/ledger}; {@code next} (a cursor) is absent on the last page. */
    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    @JsonPropertyOrder({"service", "commands_topic", "entries", "findings", "next"})
    public record LedgerPage(String service, String commandsTopic, List<LedgerEntry> entries,
                             List<DomainFinding> findings, @JsonInclude(JsonInclude.Include.NON_NULL) String next) {
    }

    /**
     * One inbox record in the audit's words. {@code outcome} is {@code succeeded},
     * {@code business_failure}, {@code noop_compensation} or {@code refused_late_action};
     * {@code recorded_at} is RFC 3339 in UTC.
     */
    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    @JsonPropertyOrder({"saga_id", "step", "phase", "command_type", "outcome", "reason", "reply", "message_id",
            "duplicates", "recorded_at"})
    public record LedgerEntry(UUID sagaId, long step, String phase, String commandType, String outcome,
                              @JsonInclude(JsonInclude.Include.NON_NULL) String reason,
                              @JsonInclude(JsonInclude.Include.NON_NULL) JsonNode reply,
                              String messageId, long duplicates, String recordedAt) {
    }

    /** The participant's own finding that an effect an inbox record claims does not hold. */
    @JsonNaming(PropertyNamingStrategies.SnakeCaseStrategy.class)
    @JsonPropertyOrder({"saga_id", "step", "phase", "check", "message"})
    public record DomainFinding(UUID sagaId, long step, String phase, String check, String message) {
    }

    /** One page of {@code GET /audit/unclaimed}; {@code next} is absent on the last page. */
    @JsonPropertyOrder({"service", "effects", "next"})
    public record UnclaimedPage(String service, List<UnclaimedEffect> effects,
                                @JsonInclude(JsonInclude.Include.NON_NULL) String next) {
    }

    /** An effect in the posts database that no inbox record claims, e.g. a post inserted by hand. */
    @JsonPropertyOrder({"check", "entity", "message"})
    public record UnclaimedEffect(String check, String entity, String message) {
    }

    /** One page of {@code GET /audit/facts/{set}}: {@code next} is the last key returned, null once the set is exhausted. */
    @JsonPropertyOrder({"set", "facts", "next"})
    public record FactsPage(String set, List<Fact> facts, String next) {
    }

    @JsonPropertyOrder({"key", "value"})
    public record Fact(String key, String value) {
    }
}
