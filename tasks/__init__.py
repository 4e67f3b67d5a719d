"""Prefect tasks: thin wrappers that give ``parley`` side effects retries and cache keys."""
