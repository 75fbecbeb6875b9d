package dev.saga.posts.posts;

import java.util.Map;
import java.util.Set;
import java.util.UUID;

import org.postgresql.util.PSQLException;
import org.springframework.dao.DuplicateKeyException;
import org.springframework.jdbc.core.JdbcTemplate;
import org.springframework.stereotype.Service;
import org.springframework.transaction.annotation.Propagation;
import org.springframework.transaction.annotation.Transactional;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.ObjectMapper;

import dev.saga.posts.protocol.Command;
import dev.saga.posts.protocol.CommandRefused;

/**
 * The post service's business rules: author replicas of users and their posts.
 *
 * <p>{@link #apply} runs in a savepoint of the caller's transaction ({@code NESTED}): when a rule
 * refuses the command ({@link CommandRefused}) only this command's writes are rolled back, and
 * the refusal becomes the recorded outcome. It is called at most once per (saga, step, phase).
 * Refusals: pen name already taken, unknown author, invalid title (empty or over 200 characters).
 */
@Service
public class PostCommands {

    public static final Set<String> COMMANDS = Set.of("CreateAuthor", "DeleteAuthor", "CreatePost", "DeletePost");
    public static final int MAX_TITLE_CHARS = 200;

    private final JdbcTemplate jdbc;
    private final ObjectMapper json;

    public PostCommands(JdbcTemplate jdbc, ObjectMapper json) {
        this.jdbc = jdbc;
        this.json = json;
    }

    public static boolean handles(String commandType) {
        return COMMANDS.contains(commandType);
    }

    /** Applies the command and returns the reply payload (JSON). */
    @Transactional(propagation = Propagation.NESTED, rollbackFor = CommandRefused.class)
    public String apply(Command cmd) {
        Map<String, Object> reply = switch (cmd.commandType()) {
            case "CreateAuthor" -> createAuthor(cmd);
            case "DeleteAuthor" -> Map.of("deleted", jdbc.update("DELETE FROM authors WHERE id = ?", cmd.uuid("user_id")) > 0);
            case "CreatePost" -> createPost(cmd);
            case "DeletePost" -> Map.of("deleted", jdbc.update("DELETE FROM posts WHERE id = ?", cmd.uuid("post_id")) > 0);
            default -> throw new CommandRefused("post-service does not handle `" + cmd.commandType() + "`");
        };
        try {
            return json.writeValueAsString(reply);
        } catch (JsonProcessingException e) {
            throw new IllegalStateException(e);
        }
    }

    /** The author replica of a registered user; pen names are unique (case-insensitive). */
    private Map<String, Object> createAuthor(Command cmd) {
        UUID id = cmd.uuid("user_id");
        String name = cmd.text("name").strip();
        try {
            jdbc.update("INSERT INTO authors (id, name) VALUES (?, ?)", id, name);
        } catch (DuplicateKeyException e) {
            if (e.getCause() instanceof PSQLException p && p.getServerErrorMessage() != null
                    && "authors_name".equals(p.getServerErrorMessage().getConstraint())) {
                throw new CommandRefused("pen name `" + name + "` is already taken by another author");
            }
            throw e;
        }
        return Map.of("author_id", id);
    }

    private Map<String, Object> createPost(Command cmd) {
        UUID id = cmd.uuid("post_id");
        UUID author = cmd.uuid("user_id");
        String title = checkTitle(cmd.text("title"));
        String body = cmd.optionalText("body").orElse("");
        Boolean exists = jdbc.queryForObject("SELECT EXISTS (SELECT 1 FROM authors WHERE id = ?)", Boolean.class, author);
        if (!Boolean.TRUE.equals(exists)) {
            throw new CommandRefused("unknown author " + author);
        }
        jdbc.update("INSERT INTO posts (id, author_id, title, body) VALUES (?, ?, ?, ?)", id, author, title, body);
        return Map.of("post_id", id);
    }

    /** The title rules: trimmed, not empty, at most 200 characters (not bytes). */
    public static String checkTitle(String raw) {
        String title = raw.strip();
        int chars = title.codePointCount(0, title.length());
        if (chars == 0) {
            throw new CommandRefused("invalid title: it must not be empty");
        }
        if (chars > MAX_TITLE_CHARS) {
            throw new CommandRefused("invalid title: " + chars + " characters, at most " + MAX_TITLE_CHARS + " allowed");
        }
        return title;
    }
}
