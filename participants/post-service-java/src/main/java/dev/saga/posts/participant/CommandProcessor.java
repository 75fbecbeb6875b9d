package dev.saga.posts.participant;

import java.util.Map;

import org.springframework.stereotype.Service;
import org.springframework.transaction.annotation.Transactional;

import dev.saga.posts.outbox.Outbox;
import dev.saga.posts.posts.PostCommands;
import dev.saga.posts.protocol.Command;
import dev.saga.posts.protocol.CommandRefused;
import dev.saga.posts.protocol.Phase;
import dev.saga.posts.protocol.Reply;

/**
 * The participant protocol for one command, in one database transaction:
 * <ol>
 * <li>lock the (saga, step);</li>
 * <li>if the inbox holds an outcome for (saga, step, phase), answer with it (and the incoming
 * attempt number) and apply nothing;</li>
 * <li>otherwise decide: an action whose compensation was already processed is refused; a
 * compensation whose action was never applied is a recorded no-op; anything else runs the
 * business rules in a savepoint ({@link PostCommands}), a refusal rolling back only its writes;</li>
 * <li>record the outcome (except a refused compensation, so the orchestrator's retry can still
 * succeed) and write the reply into the outbox, then commit.</li>
 * </ol>
 * A database error propagates: nothing is written, no reply is sent, and the listener retries the
 * command (its offset is not committed).
 */
@Service
public class CommandProcessor {

    public static final String PARTICIPANT = "post-service";
    static final String SKIPPED = "{\"skipped\":\"the action was never applied\"}";
    public static final String LATE_ACTION = "the compensation of this step was already processed, so the action is refused";

    private final Inbox inbox;
    private final PostCommands posts;
    private final Outbox outbox;

    public CommandProcessor(Inbox inbox, PostCommands posts, Outbox outbox) {
        this.inbox = inbox;
        this.posts = posts;
        this.outbox = outbox;
    }

    /** How a command was handled, for logs and metrics. */
    public record Processed(Decision decision, boolean repeat) {
        public String label() {
            return repeat ? "repeat" : decision.applied() ? "applied" : "rejected";
        }
    }

    @Transactional
    public Processed process(Command cmd, String replyTopic) {
        inbox.lock(cmd.sagaId(), cmd.stepIndex());
        Map<Phase, Decision> book = inbox.recorded(cmd.sagaId(), cmd.stepIndex());
        Processed processed;
        Decision earlier = book.get(cmd.phase());
        if (earlier != null) {
            inbox.countRepeat(cmd);
            processed = new Processed(earlier, true);
        } else {
            Decision decision = decide(cmd, book);
            boolean refusedCompensation = cmd.phase() == Phase.COMPENSATION && !decision.applied();
            if (!refusedCompensation) {
                inbox.record(cmd, decision);
            }
            processed = new Processed(decision, false);
        }
        Decision d = processed.decision();
        Reply reply = d.applied()
                ? Reply.success(cmd, PARTICIPANT, d.payloadJson())
                : Reply.businessFailure(cmd, PARTICIPANT, d.reason());
        outbox.enqueue(replyTopic, cmd.sagaId().toString(), reply.encode(), reply.headers());
        return processed;
    }

    private Decision decide(Command cmd, Map<Phase, Decision> book) {
        if (cmd.phase() == Phase.ACTION) {
            return book.containsKey(Phase.COMPENSATION) ? Decision.refused(LATE_ACTION) : apply(cmd);
        }
        Decision action = book.get(Phase.ACTION);
        // Never applied (or refused): nothing to undo. Recording this also refuses a late action.
        return action != null && action.applied() ? apply(cmd) : Decision.applied(SKIPPED);
    }

    private Decision apply(Command cmd) {
        try {
            return Decision.applied(posts.apply(cmd));
        } catch (CommandRefused refused) {
            return Decision.refused(refused.getMessage());
        }
    }
}
