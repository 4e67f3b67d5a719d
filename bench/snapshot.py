"""``--code REV``: measure a commit of the product, not whatever the working tree holds.

This machine is shared and the product code is edited while benchmarks run: a half-saved edit
fails every Parley figure (or, worse, measures a mix of two versions). With ``--code HEAD`` the
product of that commit is exported (``git archive``, read-only: no checkout, no stash, nobody
else's files touched) to ``.parley/bench/code/<sha>/``, this harness's own ``bench/`` is copied
beside it, and the run goes on there: every process it starts imports the exported code,
because the working directory comes first on ``sys.path`` (before the editable install).
Results, logs and the data dir stay in the repository's ``.parley/bench`` and ``bench/results``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final, NoReturn

# What the stack imports or reads at run time (campaigns, migrations, deployments).
PRODUCT: Final = (
    "parley",
    "flows",
    "tasks",
    "prefect_adapter",
    "webhook",
    "deployments",
    "examples",
)
ROOT_ENV: Final = "BENCH_ROOT"  # the repository the run was started in
CODE_ENV: Final = "BENCH_CODE"  # what code is measured, for the printed settings


def root() -> Path:
    """The repository the run belongs to (its ``bench/results``, its ``.parley/bench``)."""
    return Path(os.environ.get(ROOT_ENV) or Path.cwd()).resolve()


def measured_code() -> str | None:
    return os.environ.get(CODE_ENV)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def export(rev: str) -> Path:
    here = root()
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    dest = here / ".parley" / "bench" / "code" / sha[:12]
    if not dest.exists():
        staging = dest.with_name(dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", "--format=tar", sha, "--", *PRODUCT],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(staging)], input=archive, check=True)
        staging.rename(dest)
    harness = dest / "bench"
    shutil.rmtree(harness, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "results")
    shutil.copytree(here / "bench", harness, ignore=ignore)
    os.environ[CODE_ENV] = f"{sha[:12]} ({rev}, exported; harness from the working tree)"
    return dest


def rerun_in(rev: str, argv: list[str]) -> NoReturn:
    """Export ``rev`` and replace this process with the same run inside the export."""
    here = root()
    dest = export(rev)
    os.environ[ROOT_ENV] = str(here)
    os.chdir(dest)
    print(f"measuring {os.environ[CODE_ENV]} from {dest}", flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "bench", *argv])
