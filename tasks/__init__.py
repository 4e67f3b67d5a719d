"""Prefect tasks: thin ``@task`` wrappers that give ``parley`` side effects retries and cache
keys. What they call into Prefect for (run control, repairs, the runtime) is
``prefect_adapter``."""
