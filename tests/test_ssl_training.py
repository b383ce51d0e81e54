"""The trainer's label-free ("self") stages: paired samples only, no task loss, early stopping
on validation SSL loss, checkpoints every probe_every epochs, resume, and reuse downstream."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from raybench import trainer as T
from raybench.data import LoaderConfig, load_prepared
from raybench.errors import RaybenchError
from raybench.pretrain import pretrain

HP = {"hidden": 8, "cxr_backbone": "resnet_tiny", "proj_dim": 8, "ssl_optimizer": "adamw",
      "ssl_lr": 1e-3}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pheno(prepared_small):
    return load_prepared(prepared_small, "phenotyping")


def _cfg(**kw) -> T.TrainConfig:
    base = {"epochs": 1, "patience": 2, "ssl_epochs": 2, "ssl_batch_size": 16,
            "loader": LoaderConfig(batch_size=16, max_len=24)}
    return T.TrainConfig(**{**base, **kw})


class _Memory:
    """In-memory StageCheckpoints that can simulate a kill after a given epoch."""

    def __init__(self, kill_after: int | None = None) -> None:
        self.saved, self.snapshot, self.kill_after = {}, None, kill_after

    def save(self, stage, epoch, model, snapshot):
        self.saved[epoch] = {k: v.clone() for k, v in model.pretrained_state().items()}
        self.snapshot = snapshot
        if self.kill_after is not None and epoch >= self.kill_after:
            raise KeyboardInterrupt("killed")

    def resume(self, stage):
        return self.snapshot


def test_self_stage_reads_no_label_and_uses_paired_samples_only(pheno, monkeypatch):
    seen = []
    original = T.iterate_batches

    def spy(data, indices, *args, **kw):
        seen.append(np.asarray(indices))
        return original(data, indices, *args, **kw)

    monkeypatch.setattr(T, "iterate_batches", spy)
    unlabelled = dataclasses.replace(pheno, y=np.full_like(pheno.y, np.nan))
    result = pretrain(unlabelled, "convirt", HP, _cfg())
    assert seen and all((pheno.image_row[idx] >= 0).all() for idx in seen)
    paired_train = np.flatnonzero((pheno.split == 0) & (pheno.image_row >= 0))
    assert np.array_equal(np.sort(seen[0]), paired_train)
    losses = [h["train_loss"] for h in result.history] + [h["val_ssl_loss"] for h in result.history]
    assert [h["stage"] for h in result.history] == ["pretrain", "pretrain"]
    assert np.isfinite(losses).all()  # NaN labels never entered a loss


def test_checkpoints_every_probe_every_epochs_and_resume_is_exact(pheno):
    cfg = _cfg(ssl_epochs=4, probe_every=2)
    full = _Memory()
    first = pretrain(pheno, "vicreg", HP, cfg, full)
    assert sorted(full.saved) == [2, 4]
    killed = _Memory(kill_after=2)
    with pytest.raises(KeyboardInterrupt):
        pretrain(pheno, "vicreg", HP, cfg, killed)
    assert sorted(killed.saved) == [2]
    killed.kill_after = None
    resumed = pretrain(pheno, "vicreg", HP, cfg, killed)  # continues at epoch 3
    assert sorted(killed.saved) == [2, 4]
    for key, value in full.saved[4].items():
        torch.testing.assert_close(killed.saved[4][key], value, rtol=0, atol=0)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.best_epochs == first.best_epochs


def test_early_stopping_on_validation_ssl_loss(pheno, monkeypatch):
    losses = iter([1.0, 0.5, 0.7, 0.8, 0.9, 0.4, 0.3])
    monkeypatch.setattr(T._Run, "evaluate_self", lambda self, idx, loader: next(losses))
    memory = _Memory()
    result = pretrain(pheno, "convirt", HP, _cfg(ssl_epochs=7, ssl_patience=3, probe_every=3),
                      memory)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5]
    assert result.best_epochs == {"pretrain": 2}
    assert sorted(memory.saved) == [3, 5]  # every probe_every epochs and the last one run


def test_downstream_loads_the_pretrained_state_and_skips_the_self_stage(pheno):
    pre = pretrain(pheno, "align", HP, _cfg(ssl_epochs=1))
    state = pre.model.pretrained_state()
    result = T.train_and_evaluate(pheno, "align", {**HP, "ssl_eval": "linear", "lr": 1e-2},
                                  _cfg(cohort="matched"), pretrained=state)
    assert [h["stage"] for h in result.history] == ["fusion"]
    probs = result.predictions.filter(like="prob_").to_numpy()
    assert np.isfinite(probs).all()
    full = T.train_and_evaluate(pheno, "align", {**HP, "lr": 1e-2}, _cfg(cohort="matched"))
    assert [h["stage"] for h in full.history] == ["pretrain", "pretrain", "fusion"]


def test_multimodal_downstream_on_the_base_cohort_predicts_imageless_samples(pheno):
    pre = pretrain(pheno, "convirt", HP, _cfg(ssl_epochs=1))
    result = T.train_and_evaluate(pheno, "convirt", {**HP, "ssl_eval": "finetune"},
                                  _cfg(cohort="base"), pretrained=pre.model.pretrained_state())
    pred = result.predictions
    assert (~pred["cxr_present"]).sum() > 0
    assert np.isfinite(pred.filter(like="prob_").to_numpy()).all()


def test_self_stage_optimiser_comes_from_the_model(pheno, monkeypatch):
    built = []
    original = T.build_optimizer

    def spy(spec, named):
        built.append(spec)
        return original(spec, named)

    monkeypatch.setattr(T, "build_optimizer", spy)
    pretrain(pheno, "convirt", {k: v for k, v in HP.items() if not k.startswith("ssl_")},
             _cfg(ssl_epochs=1))
    assert built[0].name == "lars" and built[0].schedule == "warmup_cosine_restarts"


@pytest.mark.parametrize("settings,message", [
    ({"ssl_batch_size": 1}, "at least 2 paired samples per batch"),
    ({"ssl_batch_size": 100_000}, "fewer than one batch"),
    ({"probe_every": 5}, "probe_every"),
])
def test_bad_self_stage_settings(pheno, settings, message):
    with pytest.raises(RaybenchError, match=message):
        pretrain(pheno, "convirt", HP, _cfg(**settings))


def test_pretraining_a_supervised_method_is_refused(pheno):
    with pytest.raises(RaybenchError, match="no self-supervised"):
        pretrain(pheno, "ehr_lstm", {"hidden": 8}, _cfg())


def test_prober_caches_each_window_and_image_once_and_matches_the_model(prepared_small):
    from raybench.data import load_shared, make_batch
    from raybench.models import DataSpec, TaskSpec, build_model
    from raybench.models.ssl_base import combine_features
    from raybench.ssl_probe import CheckpointProber, ProbeConfig, probe_sets

    shared = load_shared(prepared_small)
    data = {t: load_prepared(prepared_small, t, shared=shared)
            for t in ("decompensation", "length_of_stay")}
    cfg = ProbeConfig(epochs=2, max_train_samples=300, max_val_samples=100)
    sets = probe_sets(data, list(data), ["base", "matched"], cfg, seed=0)
    loader = LoaderConfig(batch_size=64, max_len=512)  # longer than these stays
    prober = CheckpointProber(sets, ["multimodal", "ehr", "cxr"], cfg, loader)
    torch.manual_seed(0)
    model = build_model("convirt", DataSpec(shared.ehr.shape[1], 56),
                        TaskSpec("decompensation", "binary", 1), **HP).eval()
    calls = {"ehr_step": 0, "cxr": 0}
    for part in ("ehr_step", "cxr"):
        original = getattr(model, f"{part}_features")

        def counted(*args, _original=original, _part=part):
            calls[_part] += len(args[0])
            return _original(*args)

        setattr(model, f"{part}_features", counted)
    scores = prober(model)
    expected = {f"{t}|{c}|{m}" for t in data for c in ("base", "matched")
                for m in ("multimodal", "ehr", "cxr") if m != "cxr" or c == "matched"}
    assert set(scores) == expected
    # each image once; the EHR in one pass per window start (the hourly samples of a stay are
    # prefixes of one sequence; decompensation and length of stay share theirs), plus the
    # one-window call that checks the encoder is causal
    keys = np.unique(np.concatenate([prober._window_keys(s, i) for s in sets
                                     for i in (s.train, s.val)]))
    starts = np.unique(keys // (loader.max_len + 1))
    rows = {int(r) for s in sets for i in (s.train, s.val) for r in s.data.image_row[i] if r >= 0}
    assert calls == {"ehr_step": len(starts) + 1, "cxr": len(rows)}
    assert len(starts) < len(keys) / 3
    s = sets[0]
    ehr_table, cxr_table = prober._ehr_table(model), prober._cxr_table(model)
    cached = combine_features("multimodal", *prober._parts(s, s.val[:20], ehr_table, cxr_table))
    batch = make_batch(s.data, s.val[:20], replace_loader(loader), train=False)
    with torch.no_grad():
        direct = model.features(batch)
    torch.testing.assert_close(cached, direct, rtol=1e-4, atol=1e-5)


def replace_loader(loader: LoaderConfig) -> LoaderConfig:
    return dataclasses.replace(loader, augment=False)
