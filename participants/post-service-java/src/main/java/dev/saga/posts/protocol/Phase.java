package dev.saga.posts.protocol;

import saga.v1.Messages;

/** Whether a command drives a step forward or undoes it; {@code action} / {@code compensation} in headers and the inbox. */
public enum Phase {
    ACTION("action"),
    COMPENSATION("compensation");

    private final String text;

    Phase(String text) {
        this.text = text;
    }

    public String text() {
        return text;
    }

    public Messages.Phase wire() {
        return this == ACTION ? Messages.Phase.PHASE_ACTION : Messages.Phase.PHASE_COMPENSATION;
    }

    /** From the envelope's enum value; the exception's message is the dead-letter reason. */
    static Phase fromWire(int value) {
        if (value == Messages.Phase.PHASE_ACTION_VALUE) {
            return ACTION;
        }
        if (value == Messages.Phase.PHASE_COMPENSATION_VALUE) {
            return COMPENSATION;
        }
        throw new PoisonCommandException("phase: " + value + " is not action or compensation");
    }

    public static Phase fromText(String text) {
        return "action".equals(text) ? ACTION : COMPENSATION;
    }
}
