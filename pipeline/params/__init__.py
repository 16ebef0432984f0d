"""The one typed loader for params.yaml.

Every section of params.yaml is a frozen dataclass (sections.py: data, model, tokenize, evaluate, samples, mlflow,
harness; training.py: finetune, freeze, lora, train); every field says what it does and why its default is what it is.
Loading (loading.py) collects *every* problem: unknown or missing keys and wrong types (schema.py), out-of-range
values and, when asked, conflicts with the model's config (checks.py), and raises one `ParamsError` listing them
all, so a user fixes params.yaml once.
"""

from pipeline.params.checks import model_issues
from pipeline.params.loading import hydra_overrides, load_params, read_overrides
from pipeline.params.schema import Params, ParamsError
from pipeline.params.sections import (
    EVAL_SPLITS,
    SPLITS,
    DataParams,
    EvaluateParams,
    HarnessParams,
    ModelParams,
    SamplesParams,
    TokenizeParams,
    TrackingParams,
)
from pipeline.params.training import (
    LORA_TARGETS,
    FinetuneParams,
    FreezeParams,
    LoraParams,
    LoraTarget,
    TrainParams,
)

__all__ = [
    "EVAL_SPLITS",
    "LORA_TARGETS",
    "SPLITS",
    "DataParams",
    "EvaluateParams",
    "FinetuneParams",
    "FreezeParams",
    "HarnessParams",
    "LoraParams",
    "LoraTarget",
    "ModelParams",
    "Params",
    "ParamsError",
    "SamplesParams",
    "TokenizeParams",
    "TrackingParams",
    "TrainParams",
    "hydra_overrides",
    "load_params",
    "model_issues",
    "read_overrides",
]
