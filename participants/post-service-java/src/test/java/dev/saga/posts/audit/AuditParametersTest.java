package dev.saga.posts.audit;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.time.Instant;
import java.util.HashMap;
import java.util.Map;
import java.util.UUID;

import org.junit.jupiter.api.Test;

import com.fasterxml.jackson.databind.ObjectMapper;

import dev.saga.posts.audit.AuditParameters.BadRequest;
import dev.saga.posts.audit.AuditParameters.Cursor;
import dev.saga.posts.audit.AuditParameters.FactsQuery;
import dev.saga.posts.audit.AuditParameters.LedgerQuery;
import dev.saga.posts.audit.AuditParameters.UnclaimedQuery;
import dev.saga.posts.participant.CommandProcessor;
import dev.saga.posts.protocol.Phase;

/** The audit endpoints' parameters and outcomes, with the Rust kit's bounds and messages (participants/kit/src/audit.rs). */
class AuditParametersTest {

    private static final String SINCE = "2026-11-30T18:00:00Z";

    private static Map<String, String> params(String... pairs) {
        Map<String, String> m = new HashMap<>();
        for (int i = 0; i < pairs.length; i += 2) {
            m.put(pairs[i], pairs[i + 1]);
        }
        return m;
    }

    private static String refusal(Runnable parse) {
        try {
            parse.run();
        } catch (BadRequest e) {
            assertThat(e.status()).isEqualTo(400);
            return e.getMessage();
        }
        throw new AssertionError("accepted: expected a 400");
    }

    @Test
    void ledger_parameters_parse_with_defaults() {
        LedgerQuery q = LedgerQuery.parse(params("since", SINCE, "limit", "50"));
        assertThat(q.limit()).isEqualTo(50);
        assertThat(q.window().until()).isNull();
        assertThat(q.window().untilId()).isNull();
        assertThat(q.after()).isNull();
        assertThat(LedgerQuery.parse(params("since", SINCE)).limit()).isEqualTo(1000);
        UUID saga = UUID.fromString("0190d4c2-0000-7000-8000-000000000001");
        LedgerQuery paged = LedgerQuery.parse(params("since", SINCE, "until", "2026-11-30T20:00:00+01:00",
                "after", saga + "/3/compensation", "through", saga.toString().replace("-", "")));
        assertThat(paged.after()).isEqualTo(new Cursor(saga, 3, Phase.COMPENSATION));
        assertThat(paged.after().toString()).isEqualTo(saga + "/3/compensation");
        assertThat(paged.through()).isEqualTo(saga);
        assertThat(paged.window().until()).isEqualTo(Instant.parse("2026-11-30T19:00:00Z"));
    }

    @Test
    void bad_ledger_parameters_are_named() {
        assertThat(refusal(() -> LedgerQuery.parse(params()))).startsWith("since: required");
        assertThat(refusal(() -> LedgerQuery.parse(params("since", "yesterday")))).startsWith("since: `yesterday`");
        assertThat(refusal(() -> LedgerQuery.parse(params("since", SINCE, "until", "2026-11-30T17:00:00Z"))))
                .isEqualTo("until: must be later than since");
        assertThat(refusal(() -> LedgerQuery.parse(params("since", SINCE, "limit", "0"))))
                .isEqualTo("limit: expected a whole number from 1 to 10000");
        assertThat(refusal(() -> LedgerQuery.parse(params("since", SINCE, "limit", "10001")))).startsWith("limit:");
        assertThat(refusal(() -> LedgerQuery.parse(params("since", SINCE, "limit", "99999999999999999999"))))
                .startsWith("limit:");
        assertThat(refusal(() -> LedgerQuery.parse(params("since", SINCE, "after", "x"))))
                .isEqualTo("after: `x` is not a ledger cursor (expected <saga id>/<step>/<phase>)");
        String saga = UUID.randomUUID().toString();
        for (String cursor : new String[] {saga + "/1/undo", saga + "/-1/action", saga + "/1/action/2", "x/1/action"}) {
            assertThat(refusal(() -> LedgerQuery.parse(params("since", SINCE, "after", cursor)))).startsWith("after:");
        }
        assertThat(refusal(() -> LedgerQuery.parse(params("since", SINCE, "through", "x"))))
                .isEqualTo("through: `x` is not a saga id");
        assertThat(refusal(() -> LedgerQuery.parse(params("since", SINCE, "sincee", "x"))))
                .isEqualTo("unknown parameter `sincee` (expected since, until, after, through, limit)");
    }

    @Test
    void unclaimed_and_facts_take_their_own_parameters() {
        assertThat(UnclaimedQuery.parse(params("since", SINCE)).limit()).isEqualTo(1000);
        assertThat(refusal(() -> UnclaimedQuery.parse(params("since", SINCE, "through", "x"))))
                .isEqualTo("unknown parameter `through` (expected since, until, after, limit)");
        assertThat(refusal(() -> UnclaimedQuery.parse(params("since", SINCE, "after", "author_unclaimed/x"))))
                .startsWith("after:");
        UUID id = UUID.randomUUID();
        assertThat(UnclaimedQuery.parse(params("since", SINCE, "after", "post_unclaimed/" + id)).after().id())
                .isEqualTo(id);
        FactsQuery facts = FactsQuery.parse(params("after", "0190", "limit", "2"));
        assertThat(facts.after()).isEqualTo("0190");
        assertThat(facts.limit()).isEqualTo(2);
        assertThat(refusal(() -> FactsQuery.parse(params("limit", "-1"))))
                .isEqualTo("limit: expected a whole number from 1 to 10000");
        assertThat(refusal(() -> FactsQuery.parse(params("since", SINCE)))).contains("`since`");
    }

    @Test
    void unknown_fact_sets_are_404s_naming_the_set() {
        AuditLedger.requireFactSet("authors");
        AuditLedger.requireFactSet("post_counts");
        assertThatThrownBy(() -> AuditLedger.requireFactSet("users"))
                .isInstanceOfSatisfying(BadRequest.class, e -> assertThat(e.status()).isEqualTo(404))
                .hasMessage("post-service publishes no fact set `users` (it publishes: authors, post_counts)");
    }

    @Test
    void saga_ids_of_a_window_sort_inside_its_bounds() {
        Instant since = Instant.ofEpochMilli(1_764_000_000_000L);
        // 1_764_000_000_000 ms = 0x019AB697E800: the first 48 bits of a UUIDv7.
        assertThat(AuditParameters.firstIdAt(since)).isEqualTo(UUID.fromString("019ab697-e800-0000-0000-000000000000"));
        assertThat(AuditParameters.firstIdAt(Instant.ofEpochMilli(-5))).isEqualTo(new UUID(0, 0));
    }

    @Test
    void inbox_rows_map_to_the_audit_outcomes() throws Exception {
        ObjectMapper json = new ObjectMapper();
        var skipped = json.readTree("{\"skipped\":\"the action was never applied\"}");
        var deleted = json.readTree("{\"deleted\":true}");
        assertThat(AuditLedger.outcome("success", "action", null, json.readTree("{\"author_id\":\"x\"}")))
                .isEqualTo("succeeded");
        assertThat(AuditLedger.outcome("success", "compensation", null, deleted)).isEqualTo("succeeded");
        assertThat(AuditLedger.outcome("success", "compensation", null, skipped)).isEqualTo("noop_compensation");
        assertThat(AuditLedger.outcome("business_failure", "action", "unknown author x", null))
                .isEqualTo("business_failure");
        assertThat(AuditLedger.outcome("business_failure", "action", CommandProcessor.LATE_ACTION, null))
                .isEqualTo("refused_late_action");
        assertThat(AuditLedger.outcome("pending", "action", null, null)).isNull();
    }
}
