"""The conversation wing: one durable conversation, step by step (state machine, planner,
step executor, outbox, inbox, the wait handshake, operator commands)."""
