"""The rollout state machine: pure functions of state, observations and time. No I/O lives here."""
