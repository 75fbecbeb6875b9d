package dev.saga.posts.participant;

/** What processing decided for a command: applied with a reply payload (JSON), or refused with a reason. */
public record Decision(boolean applied, String payloadJson, String reason) {

    public static Decision applied(String payloadJson) {
        return new Decision(true, payloadJson, null);
    }

    public static Decision refused(String reason) {
        return new Decision(false, null, reason);
    }

    public String outcome() {
        return applied ? "success" : "business_failure";
    }
}
