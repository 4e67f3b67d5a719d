"""The dispatcher's task: one ``sweep`` task run per tick that found work, so each repair pass
shows in the Prefect UI with what it repaired (the policy is ``prefect_adapter.repairs``)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_adapter.composition import get_runtime, get_settings
from prefect_adapter.repairs import SweepWork, repair


@task(name="sweep", task_run_name="sweep: {work.summary}", cache_policy=NO_CACHE)
async def sweep(work: SweepWork) -> dict[str, int]:
    return await repair(await get_runtime(), get_settings(), work)
