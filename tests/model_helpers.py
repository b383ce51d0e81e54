"""Helpers for the method-specific model tests: tiny models, tiny batches, the train CLI."""

from __future__ import annotations

from pathlib import Path

import torch

from raybench.models import DataSpec, MultimodalModel, TaskSpec, build_model, get_model

KINDS = {"binary": 1, "multilabel": 5, "multiclass": 4}
TINY = {"hidden": 16, "cxr_backbone": "resnet_tiny", "pretrained": False, "nhead": 2,
        "max_len": 16, "classifier_hidden": 16, "embed_time": 8, "num_patches": 4,
        "num_experts": 4, "top_k": 2}


def task_spec(kind: str = "binary") -> TaskSpec:
    """A task of ``kind`` with :data:`KINDS` outputs."""
    return TaskSpec(name=f"t_{kind}", kind=kind, n_outputs=KINDS[kind])


def build_tiny(name: str, kind: str = "binary", seed: int = 0, data: DataSpec | None = None,
               **extra) -> MultimodalModel:
    """Model ``name`` with the tiny settings that it has, seeded."""
    defaults = get_model(name).default_hparams()
    hparams = {k: v for k, v in TINY.items() if k in defaults}
    torch.manual_seed(seed)
    return build_model(name, data or DataSpec(ehr_features=7, image_size=32), task_spec(kind),
                       **{**hparams, **extra})


def tiny_batch(kind: str = "binary", present=(True, False, True, True), steps: int = 6,
               features: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of ``len(present)`` samples with every optional input."""
    g = torch.Generator().manual_seed(seed)
    b = len(present)
    lengths = torch.randint(1, steps + 1, (b,), generator=g)
    lengths[0] = steps
    ehr = torch.randn(b, steps, features, generator=g)
    ehr[torch.arange(steps)[None, :] >= lengths[:, None]] = 0.0
    present_t = torch.tensor(present)
    cxr = torch.randn(b, 3, 32, 32, generator=g) * present_t[:, None, None, None]
    n = KINDS[kind]
    if kind == "multiclass":
        y = torch.randint(0, n, (b,), generator=g)
    elif kind == "binary":
        y = torch.randint(0, 2, (b,), generator=g).float()
    else:
        y = torch.randint(0, 2, (b, n), generator=g).float()
    hours = torch.rand(b, generator=g) * 48.0 * present_t
    return {"ehr": ehr, "ehr_lengths": lengths, "cxr": cxr, "cxr_present": present_t, "y": y,
            "cxr_hours": hours}


def eval_logits(model: MultimodalModel, batch: dict) -> torch.Tensor:
    """Logits in eval mode without gradients."""
    model.eval()
    with torch.no_grad():
        return model(batch).logits


def run_train_cli(capsys, data: Path, method: str, *settings: str, task: str = "phenotyping"
                  ) -> tuple[int, str]:
    """``raybench train`` in this process (``raybench.cli.main``): exit code and stderr.

    In process rather than in a subprocess to keep the suite fast; an exception other than
    ``RaybenchError`` would propagate (a traceback) and fail the test.
    """
    from raybench.cli import main

    args = ["train", "--task", task, "--method", method,
            "--data", str(data), "--set", "epochs=1", "--set", "hidden=16",
            "--set", "cxr_backbone=resnet_tiny", "--set", "pretrained=false",
            "--set", "nhead=2", "--set", "max_train_batches=2", "--set", "max_val_samples=32"]
    for setting in settings:
        args += ["--set", setting]
    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().err


def assert_one_line_error(result: tuple[int, str], *fragments: str) -> None:
    """Exit 2, one line on stderr naming every fragment, no traceback."""
    code, err = result
    assert code == 2, (code, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith("raybench: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
