"""Registering Parley's deployments, work pool and limits; the local ``serve`` entry point."""
