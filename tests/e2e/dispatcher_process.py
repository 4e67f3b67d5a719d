"""A dispatcher process for the crash tests: the dispatcher run's outreach half — the recovery of
abandoned and uncertain actions, then ticks that take Prefect's per-identity slots and drain
each identity's due actions — until it is killed. Configured by the environment, like the
worker: ``python -m tests.e2e.dispatcher_process``."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from prefect_adapter.composition import get_runtime, get_settings
from prefect_adapter.outreach_tick import outreach_tick, recover_abandoned_actions


async def main() -> None:
    settings = get_settings()
    runtime = await get_runtime()
    threshold = timedelta(seconds=4 * settings.lease_seconds)  # as flows/dispatcher.py
    while True:
        await recover_abandoned_actions(runtime, threshold)
        if done := await outreach_tick(runtime):
            print("tick:", dict(done), flush=True)
        await asyncio.sleep(settings.dispatcher_tick_seconds)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(main())
