package dev.saga.posts.protocol;

/**
 * A business rule refuses the command: answered as {@code business_failure} with this reason, and
 * whatever the command wrote is rolled back. A payload the saga cannot go on with refuses it too.
 */
public class CommandRefused extends RuntimeException {
    public CommandRefused(String reason) {
        super(reason, null, false, false);
    }
}
