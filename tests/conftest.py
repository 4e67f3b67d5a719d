"""Session-wide real services: PostgreSQL databases cloned from a migrated template, SQLite
files copied from a migrated template, and one Prefect server for the whole test session.

Prefect's environment is set here, at import, before anything imports prefect, so the test
process, the workers and the webhooks the tests start all talk to the same server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devkit.stack.processes import free_port, prefect_env

SESSION_DIR = Path(tempfile.mkdtemp(prefix="parley-tests-"))
PREFECT_PORT = free_port()
PREFECT_API_URL = f"http://127.0.0.1:{PREFECT_PORT}/api"
os.environ.update(prefect_env(SESSION_DIR / "prefect", PREFECT_API_URL))
os.environ.setdefault("PARLEY_DATA_DIR", str(SESSION_DIR / "data"))
# The server's periodic scheduler pass (default every 60 s) every few seconds, so a test sees
# a used-up schedule refilled without waiting a minute (tests/e2e/test_prefect_scheduler.py).
os.environ["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = "5"

from devkit.stack.processes import Stack  # noqa: E402
from parley.db import Database  # noqa: E402
from parley.db.migrate import upgrade  # noqa: E402
from parley.settings import get_settings  # noqa: E402

PG_ADMIN_URL = os.environ.get("PARLEY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
RUN_ID = uuid.uuid4().hex[:8]


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", PG_ADMIN_URL, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True,
        capture_output=True,
    )


def _pg_url(name: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    name = f"parley_tpl_{RUN_ID}"
    _psql(f"CREATE DATABASE {name}")
    upgrade(_pg_url(name))
    yield name
    _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def sqlite_template() -> Path:
    path = SESSION_DIR / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def database_factory(pg_template: str, sqlite_template: Path) -> Iterator[object]:
    created: list[str] = []
    counter = iter(range(10**6))

    def make(backend: str) -> str:
        n = next(counter)
        if backend == "sqlite":
            path = SESSION_DIR / f"db-{n}.db"
            shutil.copy(sqlite_template, path)
            return f"sqlite+aiosqlite:///{path}"
        name = f"parley_t_{RUN_ID}_{n}"
        _psql(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
        created.append(name)
        return _pg_url(name)

    yield make
    for name in created:
        _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def db(database_factory: object, backend: str) -> AsyncIterator[Database]:
    url = database_factory(backend)  # type: ignore[operator]
    database = Database(url)
    yield database
    await database.dispose()


@pytest.fixture
def cli_db(db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    """``db`` as the ``parley`` command sees it (a CLI test invokes the app in-process)."""
    monkeypatch.setenv("PARLEY_DATABASE_URL", db.url)
    get_settings.cache_clear()
    yield db
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """One real Prefect server per test session, on PostgreSQL: on SQLite it locks up under the
    concurrent load of several stacks (docs/architecture.md), which made slow tests look like
    failures."""
    name = f"prefect_{RUN_ID}"
    _psql(f"CREATE DATABASE {name}")
    stack = Stack(SESSION_DIR)
    stack.start_prefect_server(PREFECT_PORT, database_url=_pg_url(name))
    yield PREFECT_API_URL
    stack.stop()
    _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


LANE_FIXTURES = {"prefect_server": "e2e", "database_factory": "storage"}
"""What a test needs decides its lane (``make test-unit|test-storage|test-e2e``): a Prefect
server or a stack makes it e2e, a database (``db`` and the fixtures built on it) storage, and
nothing of the sort unit. Read from the fixtures a test really uses, so a new test lands in the
right lane without being marked by hand."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        needs = {LANE_FIXTURES[f] for f in getattr(item, "fixturenames", ()) if f in LANE_FIXTURES}
        if "e2e" in needs or item.get_closest_marker("e2e") is not None:
            item.add_marker(pytest.mark.e2e)
        elif "storage" in needs:
            item.add_marker(pytest.mark.storage)
        else:
            item.add_marker(pytest.mark.unit)
    _mark_postgresql_twins(items)


def _backend(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get("backend")


def _same_test_other_backend(item: pytest.Item) -> tuple[str, tuple[str, ...]]:
    """The test and its other parameters: the same for its SQLite and PostgreSQL runs."""
    ids = item.callspec.id.split("-")  # type: ignore[attr-defined]
    return item.nodeid.split("[", 1)[0], tuple(i for i in ids if i not in ("sqlite", "postgresql"))


def _mark_postgresql_twins(items: list[pytest.Item]) -> None:
    """``make test-storage`` is SQLite-first: a storage test's PostgreSQL run is marked
    ``postgresql_twin`` (left to ``make test``) when the same test runs on SQLite too and is not
    marked ``needs_postgresql`` — what it proves does not hang on PostgreSQL's semantics (SKIP
    LOCKED, NOTIFY/LISTEN, row locks held by another session, races between sessions).
    PostgreSQL-only tests have no SQLite twin and always run in the lane."""
    storage = [item for item in items if item.get_closest_marker("storage") is not None]
    on_sqlite = {_same_test_other_backend(i) for i in storage if _backend(i) == "sqlite"}
    for item in storage:
        if (
            _backend(item) == "postgresql"
            and item.get_closest_marker("needs_postgresql") is None
            and _same_test_other_backend(item) in on_sqlite
        ):
            item.add_marker(pytest.mark.postgresql_twin)
