"""Serve the conversation deployment from this process (local development, the demo, tests).

``serve`` polls the API for scheduled runs of its deployments; resumed and rescheduled runs
come back as scheduled runs, so one long-lived process handles starts, resumes and recoveries.
Production uses ``prefect deploy`` (prefect.yaml) and a process work pool instead.
"""

from __future__ import annotations

import logging

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.conversation import conversation
from parley.settings import get_settings


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    settings = get_settings()
    _flow_name, deployment_name = settings.conversation_deployment.split("/", 1)
    deployment = conversation.to_deployment(  # sync outside an event loop
        name=deployment_name,
        tags=["parley"],
        description="One durable Parley conversation per run.",
    )
    assert isinstance(deployment, RunnerDeployment)
    serve(deployment, limit=settings.worker_concurrency, print_starting_message=True)


if __name__ == "__main__":
    main()
