package dev.saga.posts.protocol;

/**
 * A record that can never be processed (undecodable, not for this service, another deployment's
 * reply topic): it goes to {@code <topic>.dlq} with this message as {@code dlq-reason}.
 */
public class PoisonCommandException extends RuntimeException {
    public PoisonCommandException(String reason) {
        super(reason);
    }
}
