"""The outreach wing: the per-identity action queue, the dispatcher's decisions, manual sends,
identities, rate limits and working hours."""
