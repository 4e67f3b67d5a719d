"""Flow definitions: orchestration only; every side effect is a task."""
