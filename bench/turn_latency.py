"""Kept for the README's old command: per-turn latency is now the ``latency`` figure of
``python -m bench`` (hot turn, cold turn, cold start, on PostgreSQL).

    uv run python -m bench.turn_latency [--users N]   ==   uv run python -m bench --only latency
"""

from __future__ import annotations

import argparse

from bench.run import main as run_main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=None, help="conversations to measure")
    args = parser.parse_args()
    argv = ["--only", "latency", "--quick"]
    if args.users:
        argv += ["--samples", str(args.users)]
    return run_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
