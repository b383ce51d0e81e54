"""Contract tests for every registered model (parametrised over the registry itself).

A new ``@register_model`` class is picked up automatically. Models are built tiny
(hidden 16, ``resnet_tiny``, 32 px images, B=4, T=6, F=7) so the file runs in well under a
minute and a half on 2 CPU cores.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import raybench.models.cxr_encoders as cxr_encoders
from raybench.models import (
    OPTIONAL_INPUTS,
    SEARCH_SPACE_KINDS,
    DataSpec,
    ModelConfigError,
    ModelOutput,
    MultimodalModel,
    TaskSpec,
    build_model,
    get_model,
    list_models,
    mean_probability_logits,
    register_model,
    task_loss,
    validate_search_space,
    value_mask_pairs,
)
from raybench.models import registry as registry_mod
from raybench.models.ehr_encoders import LSTMEncoder, TransformerEncoder

B, T, NF, PX = 4, 6, 7, 32
LENGTHS = [6, 3, 1, 4]
PRESENT = [True, False, True, True]
KINDS = {"binary": 1, "multilabel": 5, "multiclass": 10}
TINY = {
    "hidden": 16,
    "cxr_backbone": "resnet_tiny",
    "pretrained": False,
    "fusion_hidden": 16,
    "nhead": 2,
    "max_len": 16,
}
DATA = DataSpec(ehr_features=NF, image_size=PX)
CASES = [
    pytest.param(name, kind, id=f"{name}-{kind}")
    for name in list_models()
    for kind in KINDS
    if kind in get_model(name).supported_kinds
]
MODELS = list_models()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest single-threaded (and do not spin when the CPUs are shared)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def task_spec(kind: str) -> TaskSpec:
    return TaskSpec(name=f"t_{kind}", kind=kind, n_outputs=KINDS[kind])


def tiny(name: str) -> dict:
    defaults = get_model(name).default_hparams()
    return {k: v for k, v in TINY.items() if k in defaults}


def build(name: str, kind: str = "binary", seed: int = 0, **extra) -> MultimodalModel:
    torch.manual_seed(seed)
    return build_model(name, DATA, task_spec(kind), **{**tiny(name), **extra})


def make_batch(kind: str, seed: int = 0, present=PRESENT) -> dict[str, torch.Tensor]:
    """A batch with every optional input too (models ignore keys they did not declare)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(LENGTHS)
    ehr = torch.randn(B, T, NF, generator=g)
    ehr[torch.arange(T)[None, :] >= lengths[:, None]] = 0.0
    present = torch.tensor(present)
    cxr = torch.randn(B, 3, PX, PX, generator=g) * present[:, None, None, None]
    n = KINDS[kind]
    if kind == "multiclass":
        y = torch.randint(0, n, (B,), generator=g)
    elif kind == "binary":
        y = torch.randint(0, 2, (B,), generator=g).float()
    else:
        y = torch.randint(0, 2, (B, n), generator=g).float()
    cxr_hours = torch.rand(B, generator=g) * 48.0 * present
    return {"ehr": ehr, "ehr_lengths": lengths, "cxr": cxr, "cxr_present": present, "y": y,
            "cxr_hours": cxr_hours}


def total_loss(out: ModelOutput, batch: dict, kind: str) -> torch.Tensor:
    loss = task_loss(out.logits, batch["y"], kind, out.extras.get("loss_mask"))
    return loss + sum(out.aux_losses.values())


def eval_logits(model: MultimodalModel, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(batch).logits


def with_garbage_in_absent_images(batch: dict) -> dict:
    """``batch`` with large random pixels where ``cxr_present`` is False."""
    absent = ~batch["cxr_present"]
    garbage = dict(batch, cxr=batch["cxr"].clone())
    garbage["cxr"][absent] = torch.randn(int(absent.sum()), *batch["cxr"].shape[1:]) * 50.0
    return garbage


def absent_images_change_outputs(model: MultimodalModel, batch: dict) -> bool:
    """Whether the pixels of samples without an image change any output (eval mode)."""
    return not torch.allclose(eval_logits(model, batch),
                              eval_logits(model, with_garbage_in_absent_images(batch)))


def outputs_depend_on_the_batch(model: MultimodalModel, batch: dict) -> bool:
    """Whether some sample's output alone differs from its output inside ``batch`` (eval)."""
    together = eval_logits(model, batch)
    for i in range(len(together)):
        alone = eval_logits(model, {k: v[i:i + 1] for k, v in batch.items()})
        if not torch.allclose(alone, together[i:i + 1], rtol=1e-5, atol=1e-5):
            return True
    return False


# --------------------------------------------------------------------------- per model


@pytest.mark.parametrize("name,kind", CASES)
def test_forward_and_backward(name: str, kind: str) -> None:
    model = build(name, kind)
    batch = make_batch(kind)
    grads_by_modality = dict.fromkeys(model.modalities, False)
    for stage in [*model.pretrain_stages(), "fusion"]:
        model.set_stage(stage)
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(batch)
        assert isinstance(out, ModelOutput)
        assert out.logits.shape == (B, KINDS[kind]), stage
        assert torch.isfinite(out.logits).all(), stage
        for key, aux in out.aux_losses.items():
            assert aux.dim() == 0 and torch.isfinite(aux), key
        assert all(isinstance(v, torch.Tensor) for v in out.extras.values())
        total_loss(out, batch, kind).backward()
        named = dict(model.named_parameters())
        with_grad = [n for n, p in named.items() if p.grad is not None]
        assert with_grad, f"no gradient at all in stage {stage!r}"
        for n in with_grad:
            assert torch.isfinite(named[n].grad).all(), n
        for modality in model.modalities:
            if any(n.startswith(f"{modality}_encoder.") for n in with_grad):
                grads_by_modality[modality] = True
    assert all(grads_by_modality.values()), grads_by_modality


@pytest.mark.parametrize("name,kind", CASES)
def test_missing_cxr_does_not_leak(name: str, kind: str) -> None:
    cls = get_model(name)
    if "cxr" in cls.modalities and not cls.handles_missing_cxr:
        pytest.skip("consumes the zero image by design")
    model = build(name, kind)
    for present in ([False] * B, PRESENT):
        batch = make_batch(kind, present=present)
        absent = ~batch["cxr_present"]
        garbage = dict(batch, cxr=batch["cxr"].clone())
        garbage["cxr"][absent] = torch.randn(int(absent.sum()), 3, PX, PX) * 50.0
        torch.testing.assert_close(eval_logits(model, batch), eval_logits(model, garbage))
    model.train()  # in training mode too (absent images must not enter BatchNorm statistics)
    torch.manual_seed(1)
    a = model(batch).logits
    torch.manual_seed(1)
    torch.testing.assert_close(a, model(garbage).logits)


@pytest.mark.parametrize("name,kind", CASES)
def test_sample_output_does_not_depend_on_the_batch(name: str, kind: str) -> None:
    """Per-sample invariance; batch-dependent models only keep absent images out."""
    cls = get_model(name)
    model = build(name, kind)
    batch = make_batch(kind)
    if not cls.batch_dependent:
        assert not outputs_depend_on_the_batch(model, batch)
    elif "cxr" in cls.modalities and cls.handles_missing_cxr:
        for present in ([False] * B, PRESENT):
            assert not absent_images_change_outputs(model, make_batch(kind, present=present))
    else:
        pytest.skip("batch-dependent and consumes the zero image: nothing per-sample to check")


@pytest.mark.parametrize("name,kind", CASES)
def test_padding_beyond_lengths_is_ignored(name: str, kind: str) -> None:
    if "ehr" not in get_model(name).modalities:
        pytest.skip("no EHR input")
    model = build(name, kind)
    batch = make_batch(kind)
    padded = dict(batch, ehr=batch["ehr"].clone())
    pad = torch.arange(T)[None, :] >= batch["ehr_lengths"][:, None]
    padded["ehr"][pad] = torch.randn(int(pad.sum()), NF) * 100.0
    torch.testing.assert_close(eval_logits(model, batch), eval_logits(model, padded))


@pytest.mark.parametrize("name,kind", CASES)
def test_determinism_and_state_dict_round_trip(name: str, kind: str) -> None:
    batch = make_batch(kind)
    first, again, other = build(name, kind, seed=3), build(name, kind, seed=3), build(name, kind, 4)
    sd_first, sd_again = first.state_dict(), again.state_dict()
    assert sd_first.keys() == sd_again.keys()
    for key in sd_first:
        assert torch.equal(sd_first[key], sd_again[key]), key
    expected = eval_logits(first, batch)
    assert torch.equal(expected, eval_logits(again, batch))
    assert not torch.equal(expected, eval_logits(other, batch))
    other.load_state_dict(sd_first)
    torch.testing.assert_close(eval_logits(other, batch), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_stages_hparams_and_search_space(name: str) -> None:
    cls = get_model(name)
    assert cls.name == name
    assert cls.modalities and cls.modalities <= {"ehr", "cxr"}
    assert cls.supported_kinds and cls.supported_kinds <= set(KINDS)
    defaults = cls.default_hparams()
    assert json.loads(json.dumps(defaults)) == defaults
    assert all(isinstance(v, bool | int | float | str) for v in defaults.values())
    assert {"lr", "weight_decay"} <= set(defaults)
    space = cls.search_space()
    validate_search_space(space, defaults)
    for key, spec in space.items():  # independent of validate_search_space
        ((kind, args),) = spec.items()
        assert kind in SEARCH_SPACE_KINDS and isinstance(args, list) and args, key
    model = build(name)
    assert model.hparams == {**defaults, **tiny(name)}
    batch = make_batch("binary")
    for stage in [*model.pretrain_stages(), "fusion"]:
        model.set_stage(stage)
        assert model.stage == stage
        assert eval_logits(model, batch).shape == (B, 1)
    with pytest.raises(ValueError, match="unknown stage"):
        model.set_stage("no-such-stage")


@pytest.mark.parametrize("name", MODELS)
def test_bf16_autocast_forward(name: str) -> None:
    """The trainer runs under bf16 autocast on CUDA; CPU autocast exercises the same casts."""
    model = build(name, "multilabel")
    batch = make_batch("multilabel")
    for stage in [*model.pretrain_stages(), "fusion"]:
        model.set_stage(stage)
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
            loss = total_loss(out, batch, "multilabel")
        loss.float().backward()
        assert out.logits.shape == (B, 5) and torch.isfinite(out.logits.float()).all()


@pytest.mark.parametrize("name", MODELS)
def test_single_channel_images(name: str) -> None:
    if "cxr" not in get_model(name).modalities:
        pytest.skip("no CXR input")
    torch.manual_seed(0)
    data = DataSpec(ehr_features=NF, image_size=PX, cxr_channels=1)
    model = build_model(name, data, task_spec("binary"), **tiny(name))
    batch = make_batch("binary")
    batch["cxr"] = batch["cxr"][:, :1]
    assert eval_logits(model, batch).shape == (B, 1)


# --------------------------------------------------------------------------- registry


def test_registry_duplicate_unknown_and_patterns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_mod, "_REGISTRY", dict(registry_mod._REGISTRY))

    class Dummy(MultimodalModel):
        modalities = frozenset({"ehr"})

    with pytest.raises(ValueError, match="already registered"):
        register_model("ehr_lstm")(Dummy)
    register_model("zz_dummy")(Dummy)
    assert get_model("zz_dummy") is Dummy and Dummy.name == "zz_dummy"
    with pytest.raises(ValueError, match="already registered"):
        register_model("zz_dummy")(Dummy)
    with pytest.raises(TypeError):
        register_model("zz_not_a_model")(dict)
    with pytest.raises(ValueError) as info:
        get_model("nope")
    assert ", ".join(sorted(registry_mod._REGISTRY)) in str(info.value)
    assert {"ehr_lstm", "ehr_transformer"} <= set(list_models("ehr_*"))
    assert {"early_fusion", "joint_fusion", "late_fusion"} <= set(list_models("*_fusion"))
    assert "medfuse" not in list_models("*_fusion")
    assert list_models() == sorted(list_models())


def test_declared_inputs_are_checked_when_the_class_is_defined() -> None:
    assert OPTIONAL_INPUTS == {"cxr_hours"}
    assert all(get_model(name).inputs <= OPTIONAL_INPUTS for name in MODELS)
    assert MultimodalModel.inputs == frozenset() and not MultimodalModel.batch_dependent

    class Timed(MultimodalModel):
        inputs = frozenset({"cxr_hours"})

    assert Timed.inputs == {"cxr_hours"}
    with pytest.raises(ModelConfigError, match="'cxr_time'.*cxr_hours"):
        class Typo(MultimodalModel):
            inputs = frozenset({"cxr_time"})
    with pytest.raises(ModelConfigError, match="frozenset"):
        class NotASet(MultimodalModel):
            inputs = ("cxr_hours",)


class _PooledImages(MultimodalModel):
    """Toy batch-dependent model: each logit adds the batch mean of the present images."""

    modalities = frozenset({"ehr", "cxr"})
    handles_missing_cxr = True
    batch_dependent = True

    def __init__(self, data: DataSpec, task: TaskSpec, **hparams) -> None:
        super().__init__(data, task, **hparams)
        self.ehr_encoder = torch.nn.Linear(data.ehr_features, task.n_outputs)
        self.cxr_encoder = torch.nn.Linear(data.cxr_channels, task.n_outputs)

    def forward(self, batch: dict) -> ModelOutput:
        own = self.ehr_encoder(batch["ehr"].mean(1))
        present = batch["cxr_present"].float()[:, None]
        images = self.cxr_encoder(batch["cxr"].mean((2, 3))) * present
        pooled = images.sum(0, keepdim=True) / present.sum().clamp(min=1.0)
        return ModelOutput(own + pooled, {})


class _PooledAllImages(_PooledImages):
    """Like :class:`_PooledImages` but pools absent (zeroed or not) images too: a leak."""

    def forward(self, batch: dict) -> ModelOutput:
        own = self.ehr_encoder(batch["ehr"].mean(1))
        return ModelOutput(own + self.cxr_encoder(batch["cxr"].mean((2, 3))).mean(0), {})


def test_batch_dependence_checks_tell_models_apart() -> None:
    """The helpers behind the per-sample test detect what they claim to detect."""
    torch.manual_seed(0)
    batch = make_batch("binary")
    pooled = _PooledImages(DATA, task_spec("binary"))
    assert outputs_depend_on_the_batch(pooled, batch)
    assert not absent_images_change_outputs(pooled, batch)
    leaky = _PooledAllImages(DATA, task_spec("binary"))
    assert absent_images_change_outputs(leaky, batch)
    assert not outputs_depend_on_the_batch(build("ehr_lstm"), batch)
    assert not absent_images_change_outputs(build("late_fusion"), batch)


def test_trainer_hooks_are_no_ops_by_default() -> None:
    model = build("ehr_lstm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(make_batch("binary"))
    model.on_epoch_start(1, 2)
    model.after_backward(out, make_batch("binary"))
    model.on_epoch_end(1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_data_spec_names_steps_and_value_mask_pairs() -> None:
    old_style = DataSpec(ehr_features=NF, image_size=PX)
    assert old_style.feature_names == () and old_style.step_hours == 1.0
    names = ["heart_rate", "gcs_eye=1", "gcs_eye=2", "no_mask", "mask:heart_rate",
             "mask:gcs_eye", "mask:unused"]
    spec = DataSpec(ehr_features=7, image_size=PX, feature_names=names, step_hours=2.0)
    assert spec.feature_names == tuple(names) and spec.step_hours == 2.0
    assert value_mask_pairs(spec.feature_names) == [(0, 4), (1, 5), (2, 5), (3, None)]
    assert value_mask_pairs(()) == []
    with pytest.raises(ModelConfigError, match="7 names for ehr_features=8"):
        DataSpec(ehr_features=8, image_size=PX, feature_names=names)
    with pytest.raises(ModelConfigError, match="step_hours"):
        DataSpec(ehr_features=NF, image_size=PX, step_hours=0)


def test_value_mask_pairs_cover_the_prepared_features() -> None:
    from preprocessing.ehr_features import NAMES, feature_names

    names = feature_names()
    pairs = value_mask_pairs(names)
    masks = [i for i, n in enumerate(names) if n.startswith("mask:")]
    assert len(pairs) + len(masks) == len(names)
    assert all(m is not None for _, m in pairs)  # every value channel has its mask
    for value, mask in pairs:
        assert names[mask] == "mask:" + names[value].split("=")[0]
    assert {names[m] for _, m in pairs} <= {f"mask:{n}" for n in NAMES}


def test_unknown_hparam_and_bad_specs() -> None:
    with pytest.raises(ValueError) as info:
        build_model("medfuse", DATA, task_spec("binary"), hiden=16)
    message = str(info.value)
    assert "'hiden'" in message and "hidden" in message and "fusion_hidden" in message
    with pytest.raises(ValueError, match="ehr_encoder"):
        build("joint_fusion", ehr_encoder="gru")
    with pytest.raises(ValueError, match="cxr_backbone"):
        build("cxr_resnet", cxr_backbone="vgg")
    with pytest.raises(ValueError):
        TaskSpec("t", "binary", 2)
    with pytest.raises(ValueError):
        TaskSpec("t", "regression", 1)
    with pytest.raises(ValueError):
        validate_search_space({"lr": {"loguniform": [0.0, 1.0]}})
    with pytest.raises(ValueError):
        validate_search_space({"lr": {"normal": [0.0, 1.0]}})


# --------------------------------------------------------------------------- components


def test_mean_probability_logits_and_late_fusion_fallback() -> None:
    a, b = torch.randn(6, 3), torch.randn(6, 3)
    p = (torch.sigmoid(a) + torch.sigmoid(b)) / 2
    torch.testing.assert_close(mean_probability_logits([a, b], "multilabel"), torch.logit(p))
    q = (F.softmax(a, -1) + F.softmax(b, -1)) / 2
    torch.testing.assert_close(mean_probability_logits([a, b], "multiclass"), q.log())
    big = torch.tensor([[80.0], [-80.0]])
    assert torch.isfinite(mean_probability_logits([big, big], "binary")).all()

    model = build("late_fusion", "binary")
    batch = make_batch("binary")
    model.eval()
    with torch.no_grad():
        out = model(batch)
    absent = ~batch["cxr_present"]
    torch.testing.assert_close(out.logits[absent], out.extras["ehr_logits"][absent])
    both = mean_probability_logits([out.extras["ehr_logits"], out.extras["cxr_logits"]], "binary")
    torch.testing.assert_close(out.logits[~absent], both[~absent])


def test_task_loss_masks_and_shapes() -> None:
    logits = torch.randn(4, 1, requires_grad=True)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    loss = task_loss(logits, y, "binary", torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    full = task_loss(logits, y, "binary")
    torch.testing.assert_close(full, F.binary_cross_entropy_with_logits(logits[:, 0], y))
    ce = task_loss(torch.randn(4, 10), torch.tensor([1, 2, 3, 4]), "multiclass")
    assert ce.dim() == 0


def test_early_fusion_freezes_encoders_in_fusion_stage() -> None:
    model = build("early_fusion")
    encoders = [model.ehr_encoder, model.cxr_encoder]
    model.train()
    assert model.stage == "fusion"
    assert not any(p.requires_grad for m in encoders for p in m.parameters())
    assert not any(m.training for e in encoders for m in e.modules())
    assert model.classifier.training
    model.set_stage("ehr")
    model.train()
    assert all(p.requires_grad for m in encoders for p in m.parameters())
    assert model.ehr_encoder.training


def test_lstm_and_transformer_encoders() -> None:
    torch.manual_seed(0)
    x, lengths = torch.randn(3, 10, NF), torch.tensor([10, 7, 2])
    bi = LSTMEncoder(NF, hidden=8, layers=2, bidirectional=True).eval()
    steps, last = bi.forward_steps(x, lengths)
    assert steps.shape == (3, 10, 8) and last.shape == (3, 8)
    assert torch.all(steps[1, 7:] == 0) and torch.all(steps[2, 2:] == 0)
    enc = TransformerEncoder(NF, hidden=8, layers=1, nhead=2, dropout=0.0, max_len=4).eval()
    with torch.no_grad():
        full = enc(x, lengths)
        for i, n in enumerate(lengths.tolist()):  # the LAST max_len valid steps are kept
            window = x[i : i + 1, max(0, n - 4) : n]
            alone = enc(window, torch.tensor([window.shape[1]]))
            torch.testing.assert_close(full[i : i + 1], alone)


def test_pretrained_weights_only_from_local_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(cxr_encoders, "_WARNED", set())
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.warns(RuntimeWarning, match="random init"):
            enc = cxr_encoders.ResNetEncoder("resnet34", pretrained=True)
        assert enc.out_dim == 512 and enc.position_channels == [64, 64, 128, 256, 512]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once only
            cxr_encoders.ResNetEncoder("resnet34", pretrained=True)
        torch.manual_seed(123)
        reference = __import__("torchvision").models.resnet34(weights=None)
        (tmp_path / "checkpoints").mkdir()
        weights = cxr_encoders._WEIGHTS["resnet34"][0]
        torch.save(reference.state_dict(), tmp_path / "checkpoints" / weights.url.split("/")[-1])
        loaded = cxr_encoders.ResNetEncoder("resnet34", pretrained=True)
        assert torch.equal(loaded.stem[0].weight, reference.conv1.weight)
        assert torch.equal(loaded.stages[3][2].conv2.weight, reference.layer4[2].conv2.weight)
    finally:
        torch.hub.set_dir(previous)


def test_encode_present_keeps_the_encoder_dtype() -> None:
    torch.manual_seed(0)
    enc = cxr_encoders.ResNetEncoder("resnet_tiny", proj_dim=8).eval()
    cxr, present = torch.randn(4, 3, PX, PX), torch.tensor(PRESENT)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feat = cxr_encoders.encode_present(enc, cxr, present)  # Linear -> bf16
    assert feat.dtype == torch.bfloat16 and torch.all(feat[~present] == 0)
    with torch.no_grad():
        none = cxr_encoders.encode_present(enc, cxr, torch.zeros(4, dtype=torch.bool))
    assert none.shape == (4, 8) and torch.all(none == 0)


def test_backbone_feature_sizes() -> None:
    assert cxr_encoders.ResNetEncoder("resnet_tiny").out_dim == 128
    assert cxr_encoders.ResNetEncoder("resnet50").out_dim == 2048
    assert cxr_encoders.ResNetEncoder("resnet_tiny", proj_dim=10).out_dim == 10
    feat = cxr_encoders.ResNetEncoder("resnet_tiny")(torch.randn(2, 3, 64, 64)).detach()
    assert feat.shape == (2, 128) and not math.isnan(float(feat.sum()))
