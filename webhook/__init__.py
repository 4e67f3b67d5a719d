"""The FastAPI service: provider webhooks, the REST API, and the Prefect wake-ups they cause."""
