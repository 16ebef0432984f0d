"""Prove that the pipeline reproduces, for CI: `python -m pipeline.reproduce twice|lock`.

`twice` runs the pipeline from clean in two fresh clones of HEAD and compares every stage output's DVC hash and
every metric. `lock` runs it once in a fresh clone and compares with the committed dvc.lock and metrics files.
Both print one line per output and exit 1 when anything differs, so a change that makes results drift fails CI.

A fresh clone has no DVC cache and no outputs, so `dvc repro` there really recomputes every stage. Git-ignored
inputs under `local/` (local corpus and models) are copied in; `--offline` generates the offline profile's tiny
model and corpus in each clone instead, and points params at them.
"""
