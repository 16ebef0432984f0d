"""Run bookkeeping, none of which changes a stage's outputs (so no stage's DVC deps list it): MLflow runs and their
lineage tags, stale-run recovery, DVC-compatible hashing, signals and exit codes."""
