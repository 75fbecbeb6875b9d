package dev.saga.posts.audit;

import java.time.Instant;
import java.time.OffsetDateTime;
import java.time.format.DateTimeFormatter;
import java.time.format.DateTimeParseException;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.UUID;
import java.util.regex.Pattern;

import dev.saga.posts.protocol.Phase;

/**
 * The audit endpoints' query parameters, parsed as the Rust kit parses them
 * ({@code participants/kit/src/audit.rs}, {@code saga_proto::ledger}): the same names, bounds and
 * error messages, each naming the parameter and what is expected. Pure: no I/O.
 */
public final class AuditParameters {

    /** Entries per page when the request names no {@code limit}. */
    public static final int DEFAULT_LIMIT = 1_000;
    /** The largest {@code limit} accepted. */
    public static final int MAX_LIMIT = 10_000;

    private static final Pattern HYPHENATED = Pattern.compile("[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}");
    private static final Pattern SIMPLE = Pattern.compile("[0-9a-fA-F]{32}");
    private static final Pattern WHOLE_NUMBER = Pattern.compile("\\+?[0-9]{1,10}");

    private AuditParameters() {
    }

    /** A request the endpoint refuses: 400 (or 404 for an unknown fact set) with this message. */
    public static final class BadRequest extends RuntimeException {
        private final int status;

        BadRequest(String message) {
            this(400, message);
        }

        BadRequest(int status, String message) {
            super(message);
            this.status = status;
        }

        public int status() {
            return status;
        }
    }

    /** A window of creation times: {@code since} inclusive, {@code until} exclusive (null: no end). */
    public record Window(Instant since, Instant until) {

        /** The lowest saga id created in the window (inclusive). */
        public UUID fromId() {
            return firstIdAt(since);
        }

        /** Saga ids below this were created before the window's end (null: no end). */
        public UUID untilId() {
            return until == null ? null : firstIdAt(until);
        }
    }

    /**
     * {@code GET /audit/ledger}.
     *
     * @param through highest saga id of this request (inclusive), or null
     * @param after   the previous page's {@code next}, or null
     */
    public record LedgerQuery(Window window, UUID through, Cursor after, int limit) {

        public static LedgerQuery parse(Map<String, String> params) {
            onlyKnown(params, List.of("since", "until", "after", "through", "limit"));
            Window window = parseWindow(params);
            Cursor after = Optional.ofNullable(params.get("after")).map(a -> {
                try {
                    return Cursor.parse(a);
                } catch (IllegalArgumentException e) {
                    throw new BadRequest("after: " + e.getMessage());
                }
            }).orElse(null);
            UUID through = Optional.ofNullable(params.get("through"))
                    .map(t -> uuid(t).orElseThrow(() -> new BadRequest("through: `" + clip(t, 60) + "` is not a saga id")))
                    .orElse(null);
            return new LedgerQuery(window, through, after, parseLimit(params));
        }
    }

    /** {@code GET /audit/unclaimed}: the window, and the page ({@code after} is the previous page's {@code next}). */
    public record UnclaimedQuery(Window window, UnclaimedCursor after, int limit) {

        public static UnclaimedQuery parse(Map<String, String> params) {
            onlyKnown(params, List.of("since", "until", "after", "limit"));
            Window window = parseWindow(params);
            UnclaimedCursor after = Optional.ofNullable(params.get("after")).map(a -> {
                try {
                    return UnclaimedCursor.parse(a);
                } catch (IllegalArgumentException e) {
                    throw new BadRequest("after: " + e.getMessage());
                }
            }).orElse(null);
            return new UnclaimedQuery(window, after, parseLimit(params));
        }
    }

    /** {@code GET /audit/facts/{set}}: keys above {@code after} (exclusive, null: from the first), at most {@code limit}. */
    public record FactsQuery(String after, int limit) {

        public static FactsQuery parse(Map<String, String> params) {
            onlyKnown(params, List.of("after", "limit"));
            return new FactsQuery(params.get("after"), parseLimit(params));
        }
    }

    /** A position in the ledger's order: (saga id, step, phase), written {@code <saga id>/<step>/<phase>}. */
    public record Cursor(UUID sagaId, long step, Phase phase) {

        public static Cursor parse(String text) {
            String[] parts = text.split("/", -1);
            IllegalArgumentException bad = new IllegalArgumentException(
                    "`" + clip(text, 120) + "` is not a ledger cursor (expected <saga id>/<step>/<phase>)");
            if (parts.length != 3) {
                throw bad;
            }
            UUID saga = uuid(parts[0]).orElseThrow(() -> bad);
            if (!WHOLE_NUMBER.matcher(parts[1]).matches() || Long.parseLong(parts[1]) > 0xFFFF_FFFFL) {
                throw bad;
            }
            Phase phase = parsePhase(parts[2]).orElseThrow(() -> bad);
            return new Cursor(saga, Long.parseLong(parts[1]), phase);
        }

        @Override
        public String toString() {
            return sagaId + "/" + step + "/" + phase.text();
        }
    }

    /**
     * A position in {@code /audit/unclaimed}'s order: effects by check name, then entity id,
     * written {@code <check>/<id>} (e.g. {@code author_unclaimed/0190…}).
     */
    public record UnclaimedCursor(String check, UUID id) {

        public static UnclaimedCursor parse(String text) {
            int slash = text.indexOf('/');
            IllegalArgumentException bad = new IllegalArgumentException(
                    "`" + clip(text, 120) + "` is not an unclaimed-effects cursor (expected <check>/<id>)");
            if (slash <= 0) {
                throw bad;
            }
            UUID id = uuid(text.substring(slash + 1)).orElseThrow(() -> bad);
            return new UnclaimedCursor(text.substring(0, slash), id);
        }

        @Override
        public String toString() {
            return check + "/" + id;
        }
    }

    /**
     * The smallest UUIDv7 created at {@code at} (millisecond precision): every saga id created at
     * or after {@code at} sorts at or above it (as PostgreSQL orders uuids), every one created before below it.
     */
    public static UUID firstIdAt(Instant at) {
        long ms = Math.max(at.toEpochMilli(), 0) & ((1L << 48) - 1);
        return new UUID(ms << 16, 0);
    }

    /** A saga id as the Rust services accept one: hyphenated, simple, braced or urn:uuid. */
    public static Optional<UUID> uuid(String text) {
        String t = text;
        if (t.startsWith("urn:uuid:")) {
            t = t.substring("urn:uuid:".length());
        } else if (t.startsWith("{") && t.endsWith("}")) {
            t = t.substring(1, t.length() - 1);
        }
        if (SIMPLE.matcher(t).matches()) {
            t = t.substring(0, 8) + "-" + t.substring(8, 12) + "-" + t.substring(12, 16) + "-"
                    + t.substring(16, 20) + "-" + t.substring(20);
        }
        return HYPHENATED.matcher(t).matches() ? Optional.of(UUID.fromString(t)) : Optional.empty();
    }

    private static Optional<Phase> parsePhase(String text) {
        return switch (text) {
            case "action" -> Optional.of(Phase.ACTION);
            case "compensation" -> Optional.of(Phase.COMPENSATION);
            default -> Optional.empty();
        };
    }

    private static void onlyKnown(Map<String, String> params, List<String> known) {
        params.keySet().stream().filter(k -> !known.contains(k)).sorted().findFirst().ifPresent(unknown -> {
            throw new BadRequest("unknown parameter `" + clip(unknown, 40) + "` (expected "
                    + String.join(", ", known) + ")");
        });
    }

    /** {@code since} (required) and {@code until} (optional, later than {@code since}), RFC 3339. */
    private static Window parseWindow(Map<String, String> params) {
        Instant since = time(params, "since");
        if (since == null) {
            throw new BadRequest("since: required (RFC 3339, e.g. 2026-11-30T18:00:00Z)");
        }
        Instant until = time(params, "until");
        if (until != null && !until.isAfter(since)) {
            throw new BadRequest("until: must be later than since");
        }
        return new Window(since, until);
    }

    private static Instant time(Map<String, String> params, String name) {
        String value = params.get(name);
        if (value == null) {
            return null;
        }
        try {
            return OffsetDateTime.parse(value, DateTimeFormatter.ISO_OFFSET_DATE_TIME).toInstant();
        } catch (DateTimeParseException e) {
            throw new BadRequest(name + ": `" + clip(value, 60) + "` is not an RFC 3339 time (e.g. 2026-11-30T18:00:00Z)");
        }
    }

    private static int parseLimit(Map<String, String> params) {
        String value = params.get("limit");
        if (value == null) {
            return DEFAULT_LIMIT;
        }
        if (WHOLE_NUMBER.matcher(value).matches()) {
            long n = Long.parseLong(value);
            if (n >= 1 && n <= MAX_LIMIT) {
                return (int) n;
            }
        }
        throw new BadRequest("limit: expected a whole number from 1 to " + MAX_LIMIT);
    }

    /** At most {@code n} characters (code points) of {@code text}, for echoing input in a message. */
    static String clip(String text, int n) {
        return text.codePoints().limit(n)
                .collect(StringBuilder::new, StringBuilder::appendCodePoint, StringBuilder::append).toString();
    }
}
