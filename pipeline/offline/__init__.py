"""The offline profile: a generated Wikitext-shaped corpus and a tiny pretrained GPT-2, for runs without the hub.

`python -m pipeline.offline` writes both where profiles/offline.yaml points the pipeline (under local/, which
dvc.yaml declares as dependencies) and prints the `dvc exp run -S ...` command that runs the same stages on them;
`--run` runs it. Nothing is downloaded or copied: the text comes from `synthetic_text`'s grammar, and the tokenizer
and model are trained here, in seconds, on CPU. The same seed writes byte-identical files, so pipeline outputs can
be compared across runs.
"""
