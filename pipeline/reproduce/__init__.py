"""Prove that the pipeline reproduces, for CI: `python -m pipeline.reproduce twice|lock|reference|compare`.

`twice` runs the pipeline from clean in two fresh clones of HEAD and compares every stage output's DVC hash and
every metric, exactly. `lock` runs it once in a fresh clone and compares with the committed dvc.lock and metrics
files. `reference` runs a profile once and compares its metrics with the committed reference/<profile>_metrics.json
within that file's tolerance (another machine gives other last bits). Each prints one line per output or metric and
exits 1 when anything differs, so a change that makes results drift fails CI. `compare` runs a profile on a base
revision and on HEAD and writes their metrics side by side, for a pull request's summary.

A fresh clone has no DVC cache and no outputs, so `dvc repro` there really recomputes every stage. Git-ignored
inputs under `local/` (local corpus and models) are copied in; `--profile offline|ci` generates the profile's tiny
model and corpus in the clone instead, with the clone's own code, and points params at them.
"""
