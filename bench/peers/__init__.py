"""The same onboarding bot written on other foundations, run beside Parley in one harness.

Each module is both the peer's own code (what runs in its processes, started with
``python -m bench.peers.<name>``) and the harness side that starts, drives and stops it.
"""
