"""`python -m pipeline.study`: many configurations, queued as DVC experiments, compared in one report."""
