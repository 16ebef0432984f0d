"""GPT-2 fine-tuning with selective layer freezing, as DVC stages tracked in MLflow.

One thing happens on import, because it must happen before torch loads Intel MKL (torch's fp32 GEMMs on x86 CPUs),
and every stage imports this package first: MKL's own conditions for run-to-run identical results are set, unless
the environment already sets them. By default MKL may use fewer threads than asked for on any call
(`MKL_DYNAMIC`) and picks code branches at run time (conditional numerical reproducibility off), so two runs on one
machine can sum in different orders; MKL reads `MKL_DYNAMIC` when it initialises, so setting it later has no
effect (`MKL_VERBOSE=1` shows `CNR:AUTO,STRICT Dyn:0` on every call when this took). Intel's oneMKL Developer Guide,
"Reproducibility Conditions": a fixed thread count, MKL_DYNAMIC and OMP_DYNAMIC false; strict CNR makes ?gemm's
result independent of the thread count too. docs/reproducibility.md has what this fixed.
"""

import os

MKL_REPRODUCIBLE = {"MKL_CBWR": "AUTO,STRICT", "MKL_DYNAMIC": "FALSE", "OMP_DYNAMIC": "FALSE"}
for _name, _value in MKL_REPRODUCIBLE.items():
    os.environ.setdefault(_name, _value)
