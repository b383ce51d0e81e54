"""Models: the contract, the registry, encoders and the registered methods.

Importing this package imports every model module, which registers the models::

    from raybench.models import DataSpec, TaskSpec, build_model, list_models
    model = build_model("medfuse", DataSpec(ehr_features=76, image_size=224),
                        TaskSpec("mortality", "binary", 1), hidden=128)
"""

from __future__ import annotations

from raybench.models import (  # noqa: F401  (imported for registration)
    align,
    aug,
    concat_fusion,
    convirt,
    cxr_resnet,
    daft,
    drfuse,
    ehr_unimodal,
    flex_moe,
    healnet,
    inforeg,
    late_fusion,
    m3care,
    medfuse,
    mmtm,
    shaspec,
    smil,
    umse,
    utde,
    vicreg,
)
from raybench.models.base import (
    MODALITIES,
    OPTIONAL_INPUTS,
    SEARCH_SPACE_KINDS,
    TASK_KINDS,
    TRAINER_HPARAMS,
    DataSpec,
    ModelConfigError,
    ModelOutput,
    MultimodalModel,
    TaskSpec,
    mean_probability_logits,
    task_loss,
    validate_search_space,
    value_mask_pairs,
)
from raybench.models.registry import build_model, get_model, list_models, register_model

__all__ = [
    "MODALITIES",
    "OPTIONAL_INPUTS",
    "SEARCH_SPACE_KINDS",
    "TASK_KINDS",
    "TRAINER_HPARAMS",
    "DataSpec",
    "ModelConfigError",
    "ModelOutput",
    "MultimodalModel",
    "TaskSpec",
    "build_model",
    "get_model",
    "list_models",
    "mean_probability_logits",
    "register_model",
    "task_loss",
    "validate_search_space",
    "value_mask_pairs",
]
