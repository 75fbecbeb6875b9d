package dev.saga.posts.posts;

import java.sql.Array;
import java.sql.Timestamp;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Optional;
import java.util.Set;
import java.util.UUID;

import org.springframework.jdbc.core.JdbcTemplate;
import org.springframework.stereotype.Repository;

import com.fasterxml.jackson.databind.JsonNode;

import dev.saga.posts.audit.AuditLedger.AuditedEntry;
import dev.saga.posts.audit.AuditPages.DomainFinding;
import dev.saga.posts.audit.AuditPages.Fact;
import dev.saga.posts.audit.AuditPages.FactsPage;
import dev.saga.posts.audit.AuditPages.UnclaimedEffect;
import dev.saga.posts.audit.AuditPages.UnclaimedPage;
import dev.saga.posts.audit.AuditParameters;
import dev.saga.posts.audit.AuditParameters.FactsQuery;
import dev.saga.posts.audit.AuditParameters.UnclaimedCursor;
import dev.saga.posts.audit.AuditParameters.UnclaimedQuery;

/**
 * The post service's part of the audit, as the Rust post service's {@code check} and
 * {@code unclaimed} hooks and fact sets ({@code participants/post-service/src/lib.rs}): whether
 * the author replicas and posts the inbox claims still exist, which ones no saga made, and the
 * facts other services' data is compared with. Runs in the caller's read-only transaction.
 */
@Repository
public class PostAudit {

    public static final String SERVICE = "post-service";
    /** {@code authors}: author id → name; {@code post_counts}: author id → how many posts the author holds. */
    public static final List<String> FACT_SETS = List.of("authors", "post_counts");

    /** A kind of effect: the command that makes it, its reply's id field, its table, and its name in messages. */
    private record Effect(String command, String field, String table, String what, String singular) {
    }

    // The SQL below interpolates only these literals.
    private static final List<Effect> EFFECTS = List.of(
            new Effect("CreateAuthor", "author_id", "authors", "author replica", "author"),
            new Effect("CreatePost", "post_id", "posts", "post", "post"));

    private final JdbcTemplate jdbc;

    public PostAudit(JdbcTemplate jdbc) {
        this.jdbc = jdbc;
    }

    /**
     * A succeeded {@code CreateAuthor} that was not undone: the author replica still exists; a
     * succeeded {@code CreatePost} that was not undone: the post still exists.
     */
    public List<DomainFinding> check(List<AuditedEntry> entries) {
        List<DomainFinding> findings = new ArrayList<>();
        for (Effect effect : EFFECTS) {
            List<AuditedEntry> claimed = entries.stream().filter(e -> e.holds(effect.command())).toList();
            if (claimed.isEmpty()) {
                continue;
            }
            UUID[] ids = claimed.stream().map(e -> replyId(e, effect.field())).flatMap(Optional::stream)
                    .toArray(UUID[]::new);
            Set<UUID> existing = new HashSet<>(jdbc.query(con -> {
                var ps = con.prepareStatement("SELECT id FROM " + effect.table() + " WHERE id = ANY(?)");
                Array array = con.createArrayOf("uuid", ids);
                ps.setArray(1, array);
                return ps;
            }, (rs, n) -> rs.getObject("id", UUID.class)));
            for (AuditedEntry e : claimed) {
                Optional<UUID> id = replyId(e, effect.field());
                if (id.isEmpty()) {
                    findings.add(e.finding(effect.field() + "_missing",
                            "the recorded " + effect.command() + " reply names no " + effect.field()));
                } else if (!existing.contains(id.get())) {
                    findings.add(e.finding(effect.singular() + "_missing", effect.what() + " " + id.get()
                            + " created by this saga no longer exists in the posts database"));
                }
            }
        }
        return findings;
    }

    /**
     * Authors and posts created in the window that no succeeded {@code CreateAuthor} /
     * {@code CreatePost} in the inbox names: made outside any saga. In (check, id) order, in pages.
     */
    public UnclaimedPage unclaimed(UnclaimedQuery q) {
        StringBuilder union = new StringBuilder();
        for (Effect effect : EFFECTS) {
            if (!union.isEmpty()) {
                union.append(" UNION ALL ");
            }
            union.append("SELECT '").append(effect.singular()).append("_unclaimed' AS kind, t.id FROM ")
                    .append(effect.table()).append(" t WHERE t.created_at >= ? ")
                    .append("AND (CAST(? AS timestamptz) IS NULL OR t.created_at < ?) ")
                    .append("AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.phase = 'action' AND i.outcome = 'success' ")
                    .append("AND i.command_type = '").append(effect.command()).append("' ")
                    .append("AND i.reply->>'").append(effect.field()).append("' = t.id::text)");
        }
        List<Object> args = new ArrayList<>();
        Timestamp since = Timestamp.from(q.window().since());
        Timestamp until = q.window().until() == null ? null : Timestamp.from(q.window().until());
        for (int i = 0; i < EFFECTS.size(); i++) {
            args.add(since);
            args.add(until);
            args.add(until);
        }
        UnclaimedCursor after = q.after();
        args.add(after == null ? "" : after.check());
        args.add(after == null ? new UUID(0, 0) : after.id());
        args.add(after == null);
        args.add(q.limit());
        List<UnclaimedEffect> effects = jdbc.query(
                "SELECT kind, id FROM (" + union + ") u "
                        + "WHERE ((u.kind COLLATE \"C\", u.id) > (CAST(? AS text) COLLATE \"C\", CAST(? AS uuid)) OR ?) "
                        + "ORDER BY u.kind COLLATE \"C\", u.id LIMIT ?",
                (rs, n) -> effect(rs.getString("kind"), rs.getObject("id", UUID.class)), args.toArray());
        String next = null;
        if (effects.size() == q.limit()) {
            UnclaimedEffect last = effects.get(effects.size() - 1);
            next = last.check() + "/" + last.entity().substring(last.entity().lastIndexOf(' ') + 1);
        }
        return new UnclaimedPage(SERVICE, effects, next);
    }

    private static UnclaimedEffect effect(String kind, UUID id) {
        Effect effect = EFFECTS.stream().filter(e -> kind.equals(e.singular() + "_unclaimed")).findFirst()
                .orElseThrow();
        return new UnclaimedEffect(kind, effect.what() + " " + id, effect.what() + " " + id
                + " is in the posts database, but no " + effect.command() + " of any saga created it");
    }

    /**
     * A page of a fact set, keys above {@code q.after()} ascending in byte order (a uuid's
     * lowercase text sorts as the uuid, so {@code ORDER BY a.id} is that order):
     * {@code authors} (author id → name) or {@code post_counts} (author id → the number of posts
     * the posts database holds for it, "0" for an author without posts). Every post counts: a
     * {@code publish_post} saga that is not completed deletes its post when it compensates, so
     * once no saga is in flight they equal user-service's {@code post_counts}.
     */
    public FactsPage facts(String set, FactsQuery q) {
        String value = switch (set) {
            case "authors" -> "a.name";
            case "post_counts" -> "(SELECT count(*) FROM posts p WHERE p.author_id = a.id)::text";
            default -> throw new IllegalArgumentException("unknown fact set " + set);
        };
        List<Fact> facts = jdbc.query(
                "SELECT a.id::text AS key, " + value + " AS value FROM authors a "
                        + "WHERE a.id::text COLLATE \"C\" > CAST(? AS text) COLLATE \"C\" ORDER BY a.id LIMIT ?",
                (rs, n) -> new Fact(rs.getString("key"), rs.getString("value")),
                q.after() == null ? "" : q.after(), q.limit());
        String next = facts.size() == q.limit() ? facts.get(facts.size() - 1).key() : null;
        return new FactsPage(set, facts, next);
    }

    /** A UUID field of the recorded reply. */
    private static Optional<UUID> replyId(AuditedEntry e, String field) {
        JsonNode reply = e.entry().reply();
        if (reply == null || !reply.path(field).isTextual()) {
            return Optional.empty();
        }
        return AuditParameters.uuid(reply.path(field).asText());
    }
}
