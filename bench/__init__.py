"""Benchmarks run by hand (`python -m bench.train_bench`, `python -m bench.eval_bench`), not timed tests.

Each prints a markdown table for docs/performance.md. Every configuration runs in a fresh process, so
one configuration's peak memory never shows in another's.
"""
