"""Run a Python module under cProfile, every thread included, for ``--profile``.

    python -m bench.profiled OUT_PREFIX MODULE [ARGS...]

Parley's worker drives its runs on a thread of its own (``parley-worker-loop``) and
``python -m cProfile`` only sees the main thread, so each thread gets its own profiler here and
writes ``OUT_PREFIX.<thread>.prof`` when it ends (the process stops on SIGTERM as usual).
Profiling slows the process down: figures measured with ``--profile`` are not comparable.
"""

from __future__ import annotations

import cProfile
import re
import runpy
import signal
import sys
import threading
from typing import Any


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def main() -> None:
    prefix, module, *args = sys.argv[1:]
    original_run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        try:
            profile.runcall(original_run, self)
        finally:
            profile.dump_stats(f"{prefix}.{_safe(self.name)}.prof")

    threading.Thread.run = profiled_run  # type: ignore[method-assign]

    def exit_on_sigterm(_signum: int, _frame: object) -> None:
        # uvicorn re-raises SIGTERM after its graceful shutdown; end with the profile saved.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, exit_on_sigterm)
    sys.argv = [module, *args]
    main_profile = cProfile.Profile()
    try:
        main_profile.runcall(runpy.run_module, module, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        main_profile.dump_stats(f"{prefix}.main.prof")


def summary(paths: list[str], top: int = 25) -> str:
    """The functions that spent the most time themselves, then the biggest cumulative ones."""
    import io
    import pstats

    out = io.StringIO()
    stats: Any = pstats.Stats(*paths, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


if __name__ == "__main__":
    main()
