"""The SSL models beyond the registry-wide contract: features, stage switch and freezing,
pretrained state, missing images in the downstream stages."""

from __future__ import annotations

import pytest
import torch

from raybench.models import DataSpec, ModelConfigError, TaskSpec, build_model, get_model
from raybench.models.ssl_base import DOWNSTREAM_KEYS, SelfSupervisedModel

SSL = ["convirt", "vicreg", "align"]
B, T, NF, PX = 4, 6, 7, 32
PRESENT = [True, False, True, True]
TINY = {"hidden": 16, "cxr_backbone": "resnet_tiny", "proj_dim": 8}
DATA = DataSpec(ehr_features=NF, image_size=PX)
TASK = TaskSpec("t", "multilabel", 3)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def build(name: str, **hp) -> SelfSupervisedModel:
    torch.manual_seed(0)
    return build_model(name, DATA, TASK, **{**TINY, **hp})


def batch(present=PRESENT, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    present = torch.tensor(present)
    return {"ehr": torch.randn(B, T, NF, generator=g), "ehr_lengths": torch.tensor([6, 3, 1, 4]),
            "cxr": torch.randn(B, 3, PX, PX, generator=g) * present[:, None, None, None],
            "cxr_present": present, "y": torch.randint(0, 2, (B, 3), generator=g).float()}


def n_params(*modules) -> int:
    return sum(1 for m in modules for _ in m.parameters())


@pytest.mark.parametrize("name", SSL)
@pytest.mark.parametrize("layer", ["backbone", "projection"])
def test_features_shapes_and_absent_images(name: str, layer: str) -> None:
    widths = {}
    for modality in ("multimodal", "ehr", "cxr"):
        model = build(name, ssl_modality=modality, probe_layer=layer).eval()
        with torch.no_grad():
            feats = model.features(batch())
        assert feats.shape == (B, model.feature_dim()) and torch.isfinite(feats).all()
        widths[modality] = feats.shape[1]
        if modality != "ehr":
            garbage = batch()
            garbage["cxr"][1] = torch.randn(3, PX, PX) * 50  # sample 1 has no image
            with torch.no_grad():
                torch.testing.assert_close(model.features(garbage), feats)
        if modality == "multimodal":
            cxr_width = widths.get("cxr") or model.feature_dim() - 1 - (
                16 if layer == "backbone" else 8)
            assert feats[:, -1].tolist() == [1.0, 0.0, 1.0, 1.0]  # the presence bit
            assert torch.count_nonzero(feats[1, -1 - cxr_width:-1]) == 0  # zero CXR part
    assert widths["multimodal"] == widths["ehr"] + widths["cxr"] + 1
    assert widths["ehr"] == (16 if layer == "backbone" else 8)
    assert widths["cxr"] == (128 if layer == "backbone" else 8)  # resnet_tiny: 128


@pytest.mark.parametrize("name", SSL)
def test_stage_switch_freezes_the_right_parameters(name: str) -> None:
    model = build(name)
    encoders = n_params(model.ehr_encoder, model.cxr_encoder)
    every = n_params(model)
    head = n_params(model.head)
    assert head == 2
    model.set_stage("pretrain")
    assert model.stage_objective("pretrain") == "self"
    assert model.stage_samples("pretrain") == "paired"
    assert sum(p.requires_grad for p in model.parameters()) == every
    model.set_stage("fusion")
    assert model.stage_objective("fusion") == "task" and model.stage_samples("fusion") == "all"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}  # linear: one linear layer only
    model.train()
    for module in (model.ehr_encoder, model.cxr_encoder, model.ehr_projection,
                   model.cxr_projection):
        assert not module.training  # frozen and kept in eval mode
    for modality, used in (("multimodal", (model.ehr_encoder, model.cxr_encoder)),
                           ("ehr", (model.ehr_encoder,)), ("cxr", (model.cxr_encoder,))):
        tuned = build(name, ssl_eval="finetune", ssl_modality=modality)
        used = [getattr(tuned, f"{m}_encoder") for m in ("ehr", "cxr")
                if modality in ("multimodal", m)]
        assert sum(p.requires_grad for p in tuned.parameters()) == n_params(*used) + head
        tuned.train()
        assert all(m.training for m in used)
        assert not tuned.ehr_projection.training and not tuned.cxr_projection.training
    assert encoders < every


@pytest.mark.parametrize("name", SSL)
def test_pretrain_stage_losses_use_paired_samples_only(name: str) -> None:
    model = build(name)
    model.set_stage("pretrain")
    model.train()
    out = model(batch())
    assert set(out.aux_losses) == set(model.loss_names())
    total = sum(out.aux_losses.values())
    garbage = batch()
    garbage["cxr"][1] = torch.randn(3, PX, PX) * 50
    garbage["ehr"][1] = torch.randn(T, NF) * 50  # an unpaired sample: its EHR is not used
    torch.manual_seed(0)
    a = sum(model(batch()).aux_losses.values())
    torch.manual_seed(0)
    b = sum(model(garbage).aux_losses.values())
    torch.testing.assert_close(a, b)
    assert torch.isfinite(total)
    one = model(batch(present=[True, False, False, False]))  # fewer than 2 pairs: zero loss
    assert all(v.item() == 0.0 for v in one.aux_losses.values())


@pytest.mark.parametrize("name", SSL)
@pytest.mark.parametrize("evaluation", ["linear", "finetune"])
def test_downstream_outputs_of_imageless_samples_ignore_pixels(name: str, evaluation: str) -> None:
    model = build(name, ssl_eval=evaluation)
    for mode in ("eval", "train"):
        getattr(model, mode)()
        clean, garbage = batch(), batch()
        garbage["cxr"][1] = torch.randn(3, PX, PX) * 50
        torch.manual_seed(0)
        a = model(clean).logits
        torch.manual_seed(0)
        b = model(garbage).logits
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a[1], b[1])


@pytest.mark.parametrize("name", SSL)
def test_pretrained_state_round_trip_across_downstream_settings(name: str) -> None:
    source = build(name)
    source.set_stage("pretrain")
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01)
    state = source.pretrained_state()
    assert not any(k.startswith("head.") for k in state)
    target = build(name, ssl_modality="ehr", ssl_eval="finetune")  # another head width
    head_before = target.head.weight.detach().clone()
    target.load_pretrained(state)
    for key, value in target.pretrained_state().items():
        torch.testing.assert_close(value, state[key])
    torch.testing.assert_close(target.head.weight, head_before)  # head keeps its init
    with pytest.raises(ModelConfigError, match="does not match"):
        target.load_pretrained({k: v for k, v in state.items() if "ehr_encoder" not in k})
    other = build(name, proj_dim=4)
    with pytest.raises(ModelConfigError, match="does not fit"):
        other.load_pretrained(state)


def test_pretrain_keys_and_defaults() -> None:
    for name in SSL:
        cls = get_model(name)
        keys = set(cls.pretrain_keys())
        assert keys.isdisjoint(DOWNSTREAM_KEYS)
        assert keys | set(DOWNSTREAM_KEYS) == set(cls.default_hparams())
        assert {"ssl_lr", "proj_dim", "hidden", "cxr_backbone"} <= keys
    assert get_model("convirt").default_hparams()["temperature"] == 0.1
    assert get_model("vicreg").default_hparams()["sim_coeff"] == 25.0
    assert get_model("align").default_hparams()["ssl_optimizer"] == "adamw"
    assert get_model("convirt").default_hparams()["ssl_optimizer"] == "lars"
    assert get_model("ehr_lstm").pretrain_keys() == ()
    spec = build("convirt").optimizer_spec("pretrain")
    assert (spec.name, spec.schedule, spec.warmup_epochs, spec.restart_epochs) == (
        "lars", "warmup_cosine_restarts", 10, 500)
    assert build("align").optimizer_spec("pretrain").schedule == "cosine"
    down = build("convirt").optimizer_spec("fusion")
    assert (down.name, down.schedule, down.milestones) == ("adam", "multistep", (0.6, 0.8))


@pytest.mark.parametrize("bad", [{"ssl_eval": "knn"}, {"ssl_modality": "both"},
                                 {"probe_layer": "middle"}, {"probe_milestones": "0.8,0.6"},
                                 {"ssl_optimizer": "sgd"}, {"init_temperature": 5.0}])
def test_bad_hyperparameters_are_refused(bad: dict) -> None:
    with pytest.raises(ModelConfigError):
        build("align", **bad)


def test_ssl_settings_on_a_supervised_model_are_refused() -> None:
    with pytest.raises(ModelConfigError, match="ssl_eval"):
        build_model("ehr_lstm", DATA, TASK, ssl_eval="linear")
