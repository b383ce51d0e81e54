"""The study's ``ssl`` section: validation and bad input, expansion into downstream
experiments, checkpoint selection, artifacts; and reuse of pretraining across a kill -9."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from test_study_runner import _study as run_study_process

from raybench.cli import main
from raybench.errors import RaybenchError
from raybench.study.artifacts import Artifact, PretrainSpec, dataset_fingerprint
from raybench.study.config import (
    expand_experiments,
    fixed_hparams_for,
    load_study,
    search_space_for,
    smoke_test,
    validate_study,
)
from raybench.study.pretraining import check_ssl_tasks, select_pretraining

ROOT = Path(__file__).resolve().parents[1]


def _study(**ssl) -> dict:
    return {
        "schema_version": 1, "name": "s", "data": {"path": "/nowhere"},
        "tasks": ["mortality", "phenotyping"], "cohorts": ["base", "matched"],
        "methods": {"ehr_lstm": {}},
        "ssl": {"methods": {"convirt": {}, "align": {}}, **ssl},
    }


def test_the_ssl_study_file_validates_and_covers_medmod():
    study = load_study(ROOT / "studies" / "ssl.yaml")
    assert set(study.tasks) == {"mortality", "phenotyping", "decompensation", "length_of_stay",
                                "radiology"}
    assert set(study.cohorts) == {"base", "matched"} and study.seeds == (0, 1, 2)
    assert set(study.ssl.methods) == {"convirt", "vicreg", "align"}
    assert study.ssl.methods["convirt"].hparams["exclude_positive"] is True
    names = {e.method for e in expand_experiments(study)}
    for m in ("convirt", "vicreg", "align"):
        for e in ("linear", "finetune"):
            assert {f"{m}/{e}/multimodal", f"{m}/{e}/ehr", f"{m}/{e}/cxr"} <= names
    assert main(["validate", str(ROOT / "studies" / "ssl.yaml")]) == 0
    smoke = smoke_test(study)
    assert smoke.ssl.epochs == 2 and len(smoke.ssl.methods) == 1


def test_expansion_names_cohorts_spaces_and_fixed_hyperparameters():
    study = validate_study(_study(evaluations=["linear", "finetune"],
                                  modalities=["multimodal", "cxr"]), "t")
    ssl = [e for e in expand_experiments(study) if "/" in e.method]
    assert len(ssl) == 2 * 2 * 2 * (1 + 2)  # tasks x methods x evaluations x (base + matched)
    assert not [e for e in ssl if e.cohort == "base" and e.method.endswith("/cxr")]
    assert {e.experiment_id for e in ssl} >= {"mortality-matched-convirt/linear/cxr-m0",
                                              "phenotyping-base-align/finetune/multimodal-m0"}
    space = search_space_for(study, "convirt/finetune/cxr")
    fixed = fixed_hparams_for(study, "convirt/finetune/cxr")
    assert set(space) == {"lr", "weight_decay"} and not set(space) & set(fixed)
    assert fixed["ssl_eval"] == "finetune" and fixed["ssl_modality"] == "cxr"
    assert fixed["ssl_optimizer"] == "lars"
    assert fixed_hparams_for(study, "align/linear/ehr")["ssl_optimizer"] == "adamw"
    study = validate_study(_study(optimizer="adamw", downstream_search={
        "type": "random", "n_calls": 3, "space": {"lr": {"uniform": [1e-4, 1e-1]}}}), "t")
    assert search_space_for(study, "convirt/linear/ehr") == {"lr": {"uniform": [1e-4, 1e-1]}}
    assert fixed_hparams_for(study, "convirt/linear/ehr")["ssl_optimizer"] == "adamw"


@pytest.mark.parametrize("change,message", [
    ({"batch_size": 1}, "contrastive and VICReg losses need at least 2 paired samples"),
    ({"epochs": 5, "probe_every": 10}, "probe_every (10) is larger than epochs (5)"),
    ({"evaluations": ["linear", "knn"]}, "unknown evaluation(s) 'knn'; known: linear, finetune"),
    ({"modalities": ["both"]}, "unknown modality(s) 'both'"),
    ({"methods": {"convirt": {"ssl_lr": 20.0}}}, "optimizer lars with ssl_lr up to 20"),
    ({"methods": {"convirt": {}}, "pretrain_search": {
        "type": "random", "space": {"ssl_lr": {"uniform": [0.1, 12.0]}}}},
     "optimizer lars with ssl_lr up to 12"),
    ({"methods": {"medfuse": {}}}, "medfuse is not a self-supervised method"),
    ({"methods": {"simclr": {}}}, "unknown method(s) 'simclr'"),
    ({"methods": {"convirt": {"ssl_eval": "linear"}}}, "set by ssl.evaluations"),
    ({"pretrain_task": "sepsis"}, "unknown task 'sepsis'"),
])
def test_bad_ssl_sections_are_refused(change, message):
    with pytest.raises(RaybenchError) as info:
        validate_study(_study(**change), "x.yaml")
    assert message in str(info.value)


def test_cxr_only_rule_and_ssl_settings_on_supervised_methods():
    raw = _study()
    raw["cohorts"] = ["base"]
    with pytest.raises(RaybenchError, match="cxr runs on the matched cohort only"):
        validate_study(raw, "x.yaml")
    raw = _study()
    raw["methods"] = {"medfuse": {"ssl_eval": "linear"}}
    with pytest.raises(RaybenchError, match="medfuse is supervised; ssl_eval applies"):
        validate_study(raw, "x.yaml")
    raw = _study()
    raw["methods"] = {"convirt": {}}
    with pytest.raises(RaybenchError, match="list it under `ssl.methods`"):
        validate_study(raw, "x.yaml")
    ok = validate_study(_study(), "x.yaml")
    assert ok.ssl.pretrain_search.type == "fixed"  # default: one configuration


def test_bad_input_is_one_line_with_exit_code_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_study(batch_size=1)))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ssl.batch_size" in err and "Traceback" not in err


def test_train_command_refuses_ssl_settings_on_a_supervised_method(capsys):
    args = ["train", "--task", "mortality", "--method", "medfuse", "--data", "/nowhere",
            "--set", "ssl_eval=linear"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "medfuse is supervised; ssl_eval applies" in err


def test_a_task_without_labels_in_the_dataset_is_refused():
    study = validate_study(_study(tasks=["phenotyping"]), "x.yaml")
    manifest = {"tasks": {"mortality": {}, "phenotyping": {}}}
    check_ssl_tasks(study, manifest, "/prepared")
    with pytest.raises(RaybenchError, match="ssl.pretrain_task: task 'phenotyping' has no labels"):
        check_ssl_tasks(study, {"tasks": {"mortality": {}}}, "/prepared")
    with pytest.raises(RaybenchError, match="tasks: task 'mortality' has no labels"):
        check_ssl_tasks(validate_study(_study(), "x"), {"tasks": {"phenotyping": {}}}, "/p")


def _record(config: int, seed: int, probes: dict, history=None) -> dict:
    return {"method": "convirt", "config_id": config, "seed": seed, "key": f"k{config}{seed}",
            "params": {"ssl_lr": 0.01 * (config + 1)}, "probes": probes,
            "checkpoints": [10, 20], "history": history or []}


def test_selection_uses_validation_probe_scores_per_seed_and_config():
    key = "mortality|base|multimodal"
    records = [
        _record(0, 0, {key: {"10": 0.30, "20": 0.40}}), _record(0, 1, {key: {"10": 0.50}}),
        _record(1, 0, {key: {"10": 0.60, "20": 0.20}}), _record(1, 1, {key: {"20": 0.35}}),
        _record(2, 0, {key: {"10": 0.99}}),  # seed 1 of config 2 never finished: ineligible
    ]
    chosen = select_pretraining(records, [0, 1], [key], {"mortality": "auprc"})
    choice = chosen["convirt"][key]
    assert choice["config_id"] == 1 and choice["by"] == "probe"  # mean 0.475 > 0.45
    assert choice["val_score"] == pytest.approx(0.475)
    assert choice["seeds"]["0"] == {"artifact": "k10", "epoch": 10, "val_score": 0.60}
    assert choice["seeds"]["1"]["epoch"] == 20 and choice["params"] == {"ssl_lr": 0.02}


def test_selection_falls_back_to_validation_ssl_loss_without_probe_scores():
    key = "mortality|base|ehr"
    nan = float("nan")
    history = [{"epoch": 10, "val_ssl_loss": 2.0}, {"epoch": 20, "val_ssl_loss": 1.5}]
    records = [_record(0, 0, {key: {"10": nan, "20": nan}}, history),
               _record(0, 1, {key: {"10": nan}}, history)]
    choice = select_pretraining(records, [0, 1], [key], {"mortality": "auprc"})["convirt"][key]
    assert choice["by"] == "val_ssl_loss" and choice["seeds"]["0"]["epoch"] == 20


def test_artifact_keys_checkpoints_and_safe_loading(tmp_path):
    spec = PretrainSpec("convirt", {"ssl_lr": 0.1}, 0, {"task": "phenotyping"}, "abc",
                        {"ssl_epochs": 300})
    assert spec.key() == PretrainSpec(**json.loads(spec.canonical())).key()
    assert len(spec.key()) == 16
    for other in (PretrainSpec("convirt", {"ssl_lr": 0.1}, 1, {"task": "phenotyping"}, "abc"),
                  PretrainSpec("convirt", {"ssl_lr": 0.2}, 0, {"task": "phenotyping"}, "abc"),
                  PretrainSpec("vicreg", {"ssl_lr": 0.1}, 0, {"task": "phenotyping"}, "abc")):
        assert other.key() != spec.key()
    assert dataset_fingerprint({"a": 1}, "medmod") != dataset_fingerprint({"a": 2}, "medmod")
    for storage in (str(tmp_path / "local"), (tmp_path / "uri").as_uri()):
        artifact = Artifact(storage, spec.key())
        state = {"w": torch.arange(4.0), "n": torch.tensor(3)}
        artifact.write_checkpoint(10, state)
        loaded = artifact.load_checkpoint(10)
        assert torch.equal(loaded["w"], state["w"]) and artifact.done() is None
        artifact.write_snapshot({"epoch": 10, "history": [{"loss": 1.0}]})
        assert artifact.read_snapshot()["epoch"] == 10
        artifact.finish({"key": spec.key()})
        assert artifact.done() == {"key": spec.key()} and artifact.read_snapshot() is None
    # a checkpoint holding an arbitrary pickled object is refused, not executed
    buffer = io.BytesIO()
    torch.save({"obj": _Evil()}, buffer)
    (tmp_path / "local" / "artifacts" / spec.key() / "checkpoints" / "epoch_0020.pt"
     ).write_bytes(buffer.getvalue())
    with pytest.raises(RaybenchError, match="cannot load the checkpoint"):
        Artifact(str(tmp_path / "local"), spec.key()).load_checkpoint(20)
    assert pickle.loads(pickle.dumps(_Evil())).__class__ is _Evil
    for bad in ("../../etc", "0123", 7):  # keys are computed, never paths from a file
        with pytest.raises(RaybenchError, match="not a pretraining artifact key"):
            Artifact(str(tmp_path), bad)


class _Evil:
    """Stands for any non-tensor object in a file from a study directory."""


# --------------------------------------------------------------------------- kill -9 resume

STUDY = """\
schema_version: 1
name: ssl-resume
storage: {storage}
data: {{path: {data}}}
tasks: [phenotyping, radiology]
cohorts: [matched]
methods: {{}}            # an ssl-only study
search: {{type: fixed}}
seeds: [0, 1]
training: {{epochs: 1, max_train_batches: 1, max_val_samples: 16}}
resources: {{cpu: 0.5}}     # 4 tiny trials at once on 2 cores
fairness: {{enabled: false}}
ssl:
  methods:
    convirt: {{hidden: 8, cxr_backbone: resnet_tiny, proj_dim: 8, ssl_optimizer: adamw,
              ssl_lr: 0.001}}
  epochs: 2
  probe_every: 1
  batch_size: 16
  evaluations: [linear, finetune]
  modalities: [multimodal]
  downstream_search: {{type: fixed}}
  probe: {{epochs: 3, patience: 2}}
"""


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file()}


def test_pretraining_is_reused_after_kill_minus_9(prepared_small, tmp_path):
    path = tmp_path / "study.yaml"
    out = tmp_path / "out"
    path.write_text(STUDY.format(storage=out, data=prepared_small))
    proc = run_study_process(str(path))  # the kill-and-resume harness of test_study_runner
    deadline = time.time() + 600
    while time.time() < deadline:  # kill as soon as the first downstream trial is under way
        if (out / "pretraining.json").is_file() and list((out / "tune").glob("trial_*")):
            break
        if proc.poll() is not None:
            pytest.fail("the study ended before it could be killed: "
                        + proc.stdout.read()[-2000:])
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    artifacts = sorted(p.name for p in (out / "artifacts").iterdir())
    assert len(artifacts) == 2  # one per seed: shared by 2 tasks x 2 evaluations
    before = _files(out / "artifacts")
    assert sum(1 for name in before if name.endswith("pretrain.json")) == 2

    again = run_study_process(str(path))
    log, _ = again.communicate(timeout=900)
    assert again.returncode == 0, log[-3000:]
    assert sorted(p.name for p in (out / "artifacts").iterdir()) == artifacts
    assert _files(out / "artifacts") == before  # nothing retrained or rewritten
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 * 2 * 2 and (trials.status == "ok").all()  # tasks x evals x seeds
    assert set(trials.method) == {"convirt/linear/multimodal", "convirt/finetune/multimodal"}
    summary = json.loads((out / "pretraining.json").read_text())
    chosen = summary["selection"]["convirt"]
    assert set(chosen) == {"phenotyping|matched|multimodal", "radiology|matched|multimodal"}
    assert {run["key"] for run in summary["runs"]} == set(artifacts)
    for choice in chosen.values():
        assert {s["artifact"] for s in choice["seeds"].values()} == set(artifacts)
