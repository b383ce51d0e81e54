"""Study configuration: every study file loads, bad studies are refused before Ray starts
with a one-line RaybenchError naming the file and the field, experiments expand stably."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from raybench.errors import RaybenchError
from raybench.models import get_model, list_models
from raybench.study import (
    Experiment,
    expand_experiments,
    fixed_hparams_for,
    load_study,
    resolved_dict,
    search_space_for,
    smoke_test,
    to_train_config,
    validate_study,
)
from raybench.study.config import ratio_label
from raybench.tasks import list_tasks

STUDIES = Path(__file__).resolve().parents[1] / "studies"

MINIMAL = {
    "schema_version": 1,
    "data": {"synthetic": {"patients": 50, "image_size": 64,
                           "preprocess": {"cxr_image_size": 64, "imputations": ["medmod"]}}},
    "tasks": ["mortality"],
    "methods": ["ehr_lstm", "medfuse"],
}


def write(tmp_path: Path, changes: dict | None = None, drop: tuple = ()) -> Path:
    """A study file: MINIMAL updated with ``changes`` (top-level), without ``drop`` keys."""
    raw = {**copy.deepcopy(MINIMAL), **(changes or {})}
    for key in drop:
        raw.pop(key)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def refused(path: Path, overrides: tuple = ()) -> str:
    """The message of the RaybenchError that loading ``path`` must raise (checked one-line)."""
    with pytest.raises(RaybenchError) as info:
        load_study(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    error = info.value  # no chained traceback when printed
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    return message


# ----------------------------------------------------------------------------- study files
@pytest.mark.parametrize("name", ["demo", "debug", "robustness", "medmod", "carebench", "ssl"])
def test_study_file_loads_and_round_trips(name):
    study = load_study(STUDIES / f"{name}.yaml")
    assert study.name == name
    experiments = expand_experiments(study)
    ids = [e.experiment_id for e in experiments]
    assert experiments and len(set(ids)) == len(ids)
    resolved = resolved_dict(study)
    text = yaml.safe_dump(resolved, sort_keys=True)  # as the runner writes it
    json.dumps(resolved)
    again = validate_study(yaml.safe_load(text), "resolved")
    assert sorted(e.experiment_id for e in expand_experiments(again)) == sorted(ids)
    assert resolved_dict(again) == resolved
    for method in study.methods:
        assert search_space_for(again, method) == search_space_for(study, method)
        assert fixed_hparams_for(again, method) == fixed_hparams_for(study, method)


def test_no_other_study_files_left_untested():
    assert sorted(p.stem for p in STUDIES.glob("*.yaml")) == sorted(
        ["demo", "debug", "robustness", "medmod", "carebench", "ssl"])


def test_study_file_contents():
    demo = load_study(STUDIES / "demo.yaml")
    assert demo.data.synthetic is not None and demo.search.type == "gp"
    assert demo.seeds == (0, 1, 2) and demo.fairness.enabled
    # 2 tasks x (ehr_lstm 2 cohorts x 1 ratio + cxr_resnet matched x 1 + late_fusion 2 x 1
    #            + joint_fusion and medfuse 2 cohorts x 2 ratios)
    assert len(expand_experiments(demo)) == 2 * (2 + 1 + 2 + 2 * 4)
    robust = load_study(STUDIES / "robustness.yaml")
    assert robust.robustness.cxr_missing_ratios == (0.0, 0.2, 0.4, 0.6, 0.8)
    assert set(robust.methods) >= {"ehr_lstm", "ehr_transformer", "cxr_resnet", "joint_fusion",
                                   "early_fusion", "late_fusion", "medfuse", "mmtm", "daft"}
    assert robust.resources.gpu == 0.25 and robust.search.n_calls == 20
    care = load_study(STUDIES / "carebench.yaml")
    assert care.seeds == (42, 123, 1234) and care.data.imputation == "carebench"
    assert (care.search.n_calls, care.search.n_initial_points, care.search.acq_func) == (
        20, 5, "gp_hedge")
    assert fixed_hparams_for(care, "medfuse")["cxr_backbone"] == "resnet50"
    carebench_17 = {"ehr_lstm", "ehr_transformer", "cxr_resnet", "late_fusion", "mmtm", "daft",
                    "utde", "aug", "inforeg", "healnet", "flex_moe", "drfuse", "medfuse",
                    "m3care", "shaspec", "smil", "umse"}
    assert set(care.methods) == carebench_17
    assert set(care.tasks) == {"phenotyping", "mortality_icu", "length_of_stay_7"}
    assert set(care.cohorts) == {"base", "matched"}
    for method in carebench_17:  # CareBench fixes lr; it searches exactly its eight methods
        assert fixed_hparams_for(care, method)["lr"] == 1e-4
        space = search_space_for(care, method)
        searched = method in {"aug", "inforeg", "healnet", "flex_moe", "drfuse", "shaspec",
                              "m3care", "smil"}
        assert (space == get_model(method).search_space()) if searched else space == {}
    medmod = load_study(STUDIES / "medmod.yaml")
    assert set(medmod.tasks) == {"mortality", "phenotyping", "decompensation",
                                 "length_of_stay", "radiology"}
    decomp = next(e for e in expand_experiments(medmod) if e.task == "decompensation")
    assert to_train_config(medmod, decomp, 0).max_train_batches == 2000


# ----------------------------------------------------------------------------- refusals
def test_unknown_keys_name_file_and_field(tmp_path):
    message = refused(write(tmp_path, {"trainng": {"epochs": 1}}))
    assert "trainng: unknown field" in message and "training" in message
    message = refused(write(tmp_path, {"training": {"epoch": 1}}))
    assert "training.epoch: unknown field" in message and "epochs" in message
    message = refused(write(tmp_path, {"search": {"type": "random", "n_call": 3}}))
    assert "search.n_call: unknown field" in message and "n_calls" in message
    data = copy.deepcopy(MINIMAL["data"])
    data["synthetic"]["preprocess"]["cxr_size"] = 64
    assert "data.synthetic.preprocess.cxr_size: unknown field" in refused(
        write(tmp_path, {"data": data}))


def test_search_field_error_has_the_documented_form(tmp_path):
    path = write(tmp_path, {"search": {"type": "gp", "n_calls": 0}})
    assert refused(path) == f"{path}: search.n_calls: Input should be greater than 0"
    assert "search: type must be one of gp, random, fixed" in refused(
        write(tmp_path, {"search": {"type": "grid"}}))


def test_unknown_task_and_method_list_the_known_ones(tmp_path):
    message = refused(write(tmp_path, {"tasks": ["mortality", "sepsis"]}))
    assert "tasks: unknown task(s) 'sepsis'" in message
    assert all(task in message for task in list_tasks())
    message = refused(write(tmp_path, {"methods": ["ehr_lstm", "drfuse_v9"]}))
    assert "methods: unknown method(s) 'drfuse_v9'" in message
    assert all(method in message for method in list_models())


def test_unknown_or_mistyped_hyperparameters(tmp_path):
    message = refused(write(tmp_path, {"methods": {"ehr_lstm": {"hiden": 32}}}))
    assert "methods.ehr_lstm.hiden: not a hyperparameter of ehr_lstm" in message
    assert "hidden" in message
    assert "methods.ehr_lstm.hidden: expected int" in refused(
        write(tmp_path, {"methods": {"ehr_lstm": {"hidden": "32"}}}))
    assert "methods.medfuse.cxr_backbone: 'resnet_101' is not one of" in refused(
        write(tmp_path, {"methods": {"medfuse": {"cxr_backbone": "resnet_101"}}}))


def test_cxr_only_method_needs_images_for_every_evaluated_sample(tmp_path):
    both = {"cohorts": ["base", "matched"]}
    message = refused(write(tmp_path, {**both, "methods": ["cxr_resnet"]}))
    assert "methods.cxr_resnet:" in message and "matched" in message
    ok = {**both, "methods": {"cxr_resnet": {"cohorts": ["matched"]}}}
    assert len(expand_experiments(load_study(write(tmp_path, ok)))) == 1
    assert len(expand_experiments(load_study(write(tmp_path, {
        "cohorts": ["matched"], "methods": ["cxr_resnet"]})))) == 1
    missing = {"cohorts": ["matched"], "methods": ["cxr_resnet", "medfuse"],
               "robustness": {"cxr_missing_ratios": [0.0, 0.4]}}
    assert "cannot predict" in refused(write(tmp_path, missing))
    train_only = {**missing, "robustness": {"cxr_missing_ratios": [0.0, 0.4],
                                            "missing_splits": ["train"]}}
    assert len(expand_experiments(load_study(write(tmp_path, train_only)))) == 4
    restricted = {**missing, "methods": {"cxr_resnet": {"cxr_missing_ratios": [0.0]},
                                         "medfuse": None}}
    ids = [e.experiment_id for e in expand_experiments(load_study(write(tmp_path, restricted)))]
    assert ids == ["mortality-matched-cxr_resnet-m0", "mortality-matched-medfuse-m0",
                   "mortality-matched-medfuse-m0.4"]
    # matched with missing ratios is fine for methods that use the EHR
    matched = {**missing, "methods": ["medfuse"]}
    assert len(expand_experiments(load_study(write(tmp_path, matched)))) == 2


def test_method_restrictions_must_be_within_the_study(tmp_path):
    message = refused(write(tmp_path, {"methods": {"medfuse": {"cohorts": ["matched"]}}}))
    assert "methods.medfuse.cohorts: matched not among the study's cohorts" in message


def test_method_that_does_not_support_the_task_kind(tmp_path, monkeypatch):
    monkeypatch.setattr(get_model("ehr_lstm"), "supported_kinds", frozenset({"binary"}))
    message = refused(write(tmp_path, {"tasks": ["mortality", "phenotyping"]}))
    assert "methods.ehr_lstm: ehr_lstm does not support multilabel tasks like 'phenotyping'" in (
        message)


@pytest.mark.parametrize("gpu", [0, 0.25, 0.5, 1, 2, 4])
def test_gpu_fraction_or_whole_number_accepted(tmp_path, gpu):
    assert load_study(write(tmp_path, {"resources": {"gpu": gpu}})).resources.gpu == gpu


@pytest.mark.parametrize("gpu", [1.5, 2.25, -0.5])
def test_gpu_fraction_above_one_refused(tmp_path, gpu):
    assert "resources.gpu:" in refused(write(tmp_path, {"resources": {"gpu": gpu}}))


@pytest.mark.parametrize("change, expected", [
    ({"search": {"n_calls": 4, "n_initial_points": 5}},
     "search: n_initial_points (5) must be <= n_calls (4)"),
    ({"seeds": []}, "seeds: needs at least one seed"),
    ({"seeds": [0, 1, 0]}, "seeds: duplicate seed: 0"),
    ({"seeds": [True]}, "seeds[0]: Input should be a valid integer"),
    ({"tasks": ["mortality", "mortality"]}, "tasks: duplicate task: mortality"),
    ({"cohorts": ["paired"]}, "cohorts[0]: Input should be 'base' or 'matched'"),
    ({"robustness": {"cxr_missing_ratios": [0.0, 1.0]}},
     "robustness.cxr_missing_ratios[1]: Input should be less than 1"),
    ({"robustness": {"missing_splits": ["train", "dev"]}}, "robustness.missing_splits[1]"),
    ({"fairness": {"attributes": ["race"]}}, "fairness.attributes[0]"),
    ({"schema_version": 2}, "schema_version: unsupported schema_version 2"),
    ({"data": {"path": "/x", "synthetic": {}}}, "data: give exactly one of"),
    ({"data": {"imputation": "medmod"}}, "data: give exactly one of"),
    ({"data": {"synthetic": {"preprocess": {"imputations": ["medmod"]}},
               "imputation": "carebench"}}, "data: imputation 'carebench' is not among"),
    ({"storage": "ftp://host/dir"}, "storage: unknown URI scheme 'ftp'"),
    ({"training": {"crop": 96}}, "training.crop: 96 is larger than the prepared images"),
    ({"methods": {"ehr_lstm": {"hidden": 32, "search_space": {"hidden": {"choice": [8]}}}}},
     "methods.ehr_lstm: hidden both fixed and in search_space"),
    ({"methods": {"ehr_lstm": {"search_space": {"lr": {"uniform": [1, 0]}}}}},
     "methods.ehr_lstm.search_space: search space 'lr': bad uniform bounds"),
    ({"methods": {"ehr_lstm": {"lr": 1e-3, "weight_decay": 0.0, "hidden": 32,
                               "ehr_layers": 1, "dropout": 0.1}}},
     "methods.ehr_lstm: every searched hyperparameter is fixed"),
    ({"methods": []}, "methods: needs at least one method"),
])
def test_invalid_combinations_refused(tmp_path, change, expected):
    assert expected in refused(write(tmp_path, change))


def test_schema_version_required(tmp_path):
    assert "schema_version: Field required" in refused(write(tmp_path, drop=("schema_version",)))


def test_yaml_syntax_error_gives_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("schema_version: 1\ntasks: [mortality\nmethods: [ehr_lstm]\n")
    assert refused(path).startswith(f"{path}:3:")
    path.write_text("schema_version: 1\ntasks: [mortality]\ntasks: [phenotyping]\n")
    assert refused(path).startswith(f"{path}:3:1: invalid YAML: duplicate key 'tasks'")


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(RaybenchError, match="does not exist"):
        load_study(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n")
    assert "expected a mapping" in refused(path)


# ----------------------------------------------------------------------------- overrides
def test_set_overrides(tmp_path):
    path = write(tmp_path)
    study = load_study(path, ["search.n_calls=7", "seeds=[5, 6]", "methods.ehr_lstm.hidden=64",
                              "training.max_train_batches=3", "resources.gpu=0.5",
                              "robustness.cxr_missing_ratios=[0, 0.25]"])
    assert study.search.n_calls == 7 and study.seeds == (5, 6)
    assert study.methods["ehr_lstm"].hparams == {"hidden": 64}
    assert set(study.methods) == {"ehr_lstm", "medfuse"}  # the list became a mapping
    assert study.training.max_train_batches == 3 and study.resources.gpu == 0.5
    assert load_study(path, ["seeds=[0, 1, 2]", "seeds.1=9"]).seeds == (0, 9, 2)
    switched = load_study(path, ["data.synthetic=null", "data.path=/prepared"])
    assert switched.data.path == "/prepared" and switched.data.synthetic is None
    assert load_study(path).search.n_calls == 20  # the file itself is unchanged


def test_bad_overrides(tmp_path):
    path = write(tmp_path)
    message = refused(path, ["search.n_calls=0"])
    assert "--set search.n_calls=0" in message and "search.n_calls: Input should be" in message
    with pytest.raises(RaybenchError, match="expects field.path=value"):
        load_study(path, ["search.n_calls"])
    with pytest.raises(RaybenchError, match="schema_version is a int, it has no field 'x'"):
        load_study(path, ["schema_version.x=1"])
    with pytest.raises(RaybenchError, match="tasks is a list, it has no field 'x'"):
        load_study(path, ["tasks.x=1"])


# ----------------------------------------------------------------------------- expansion
def test_expansion_count_order_and_ids(tmp_path):
    study = load_study(write(tmp_path, {
        "tasks": ["mortality", "length_of_stay_7"], "cohorts": ["base", "matched"],
        "methods": ["ehr_lstm", "medfuse", "late_fusion"],
        "robustness": {"cxr_missing_ratios": [0.0, 0.4, 0.00001]}}))
    experiments = expand_experiments(study)
    assert len(experiments) == 2 * 2 * 3 * 3
    ids = [e.experiment_id for e in experiments]
    assert len(set(ids)) == len(ids) and ids == [e.experiment_id for e in
                                                 expand_experiments(study)]
    assert ids[:4] == ["mortality-base-ehr_lstm-m0", "mortality-base-ehr_lstm-m0.4",
                       "mortality-base-ehr_lstm-m0.00001", "mortality-base-medfuse-m0"]
    assert "length_of_stay_7-matched-late_fusion-m0.4" in ids
    assert Experiment("mortality", "base", "medfuse", 0.4).experiment_id == (
        "mortality-base-medfuse-m0.4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        experiments[0].task = "x"


def test_ratio_label():
    assert [ratio_label(r) for r in (0, 0.0, 0.2, 0.25, 1e-5)] == [
        "0", "0", "0.2", "0.25", "0.00001"]


def test_search_space_and_fixed_hparams(tmp_path):
    custom = {"lr": {"loguniform": [1e-4, 1e-2]}, "dropout": {"uniform": [0.1, 0.2]}}
    study = load_study(write(tmp_path, {"methods": {
        "ehr_lstm": {"hidden": 32, "dropout": 0.1},
        "medfuse": {"search_space": custom}}}))
    model_space = get_model("ehr_lstm").search_space()
    lstm = search_space_for(study, "ehr_lstm")
    assert set(lstm) == set(model_space) - {"hidden", "dropout"}
    assert search_space_for(study, "medfuse") == custom
    for method in ("ehr_lstm", "medfuse"):
        fixed = fixed_hparams_for(study, method)
        assert not set(fixed) & set(search_space_for(study, method))
        assert set(fixed) | set(search_space_for(study, method)) == set(
            get_model(method).default_hparams())
    assert fixed_hparams_for(study, "ehr_lstm")["hidden"] == 32
    fixed_study = load_study(write(tmp_path, {"search": {"type": "fixed"}}))
    assert search_space_for(fixed_study, "medfuse") == {}
    assert fixed_hparams_for(fixed_study, "medfuse") == get_model("medfuse").default_hparams()


@pytest.mark.parametrize("search", [{"type": "gp", "n_calls": 4, "n_initial_points": 2},
                                    {"type": "random", "n_calls": 4}])
def test_empty_search_space_means_not_searched(tmp_path, search, capsys):
    from raybench.cli import main
    from raybench.search.gp import GPSearcher
    from raybench.study.multiplex import FixedSearcher
    from raybench.study.runner import _searcher

    path = write(tmp_path, {"methods": {"ehr_lstm": {"hidden": 32, "search_space": {}},
                                        "medfuse": None}, "search": search})
    study = load_study(path)
    assert search_space_for(study, "ehr_lstm") == {}
    assert fixed_hparams_for(study, "ehr_lstm") == {
        **get_model("ehr_lstm").default_hparams(), "hidden": 32}
    assert search_space_for(study, "medfuse") == get_model("medfuse").search_space()
    searchers = {e.method: _searcher(study, e, search_space_for(study, e.method),
                                     fixed_hparams_for(study, e.method))
                 for e in expand_experiments(study)}
    assert isinstance(searchers["ehr_lstm"], FixedSearcher)
    assert isinstance(searchers["medfuse"], GPSearcher)
    fixed = searchers["ehr_lstm"]
    handed = [fixed.suggest(str(i)) for i in range(4)]  # one configuration x the 3 seeds
    assert [h["seed"] for h in handed[:3]] == [0, 1, 2] and handed[3] == FixedSearcher.FINISHED
    assert {h["config_id"] for h in handed[:3]} == {0}
    again = validate_study(yaml.safe_load(yaml.safe_dump(resolved_dict(study))), "resolved")
    assert search_space_for(again, "ehr_lstm") == {}
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "valid; 2 experiments" in out and "not searched, one configuration: ehr_lstm" in out


def test_to_train_config(tmp_path):
    study = load_study(write(tmp_path, {
        "tasks": ["mortality", "decompensation"], "cohorts": ["matched"],
        "training": {"epochs": 3, "patience": 2, "batch_size": 8, "max_train_batches": 10,
                     "hourly_max_train_batches": 99, "hourly_max_val_samples": 500,
                     "crop": 56, "augment": False, "optimizer": "adamw", "amp": False},
        "robustness": {"cxr_missing_ratios": [0.6], "missing_splits": ["train", "val"]}}))
    mortality, decompensation = expand_experiments(study)[0], expand_experiments(study)[-1]
    config = to_train_config(study, mortality, seed=7)
    assert (config.epochs, config.patience, config.seed, config.optimizer, config.amp) == (
        3, 2, 7, "adamw", False)
    assert (config.cohort, config.cxr_missing_ratio, config.cxr_missing_splits) == (
        "matched", 0.6, ("train", "val"))
    assert (config.max_train_batches, config.max_val_samples) == (10, None)
    assert (config.loader.batch_size, config.loader.crop, config.loader.augment) == (
        8, 56, False)
    hourly = to_train_config(study, decompensation, seed=0)
    assert (hourly.max_train_batches, hourly.max_val_samples) == (99, 500)


def test_training_defaults_are_the_trainers():
    from raybench.data import GROUP_COLUMNS, LoaderConfig
    from raybench.study.schema import GROUP_ATTRIBUTES, TrainingSection
    from raybench.trainer import TrainConfig

    ours, train, loader = TrainingSection(), TrainConfig(), LoaderConfig()
    for key in ("epochs", "patience", "pretrain_epochs", "optimizer", "amp",
                "max_train_batches", "max_val_samples"):
        assert getattr(ours, key) == getattr(train, key), key
    for key in ("batch_size", "crop", "augment"):
        assert getattr(ours, key) == getattr(loader, key), key
    assert GROUP_ATTRIBUTES == GROUP_COLUMNS


def test_defaults_name_and_storage(tmp_path):
    study = load_study(write(tmp_path))
    assert (study.name, study.storage, study.cohorts, study.seeds) == (
        "study", "results/study", ("base",), (0, 1, 2))
    assert (study.search.type, study.search.n_calls, study.search.n_initial_points) == (
        "gp", 20, 5)
    assert load_study(write(tmp_path, {"storage": "s3://bucket/x"})).storage == "s3://bucket/x"


def test_smoke_test_shrinks_a_study():
    study = load_study(STUDIES / "demo.yaml")
    small = smoke_test(study)
    assert len(expand_experiments(small)) == 1 and small.seeds == (0, 1)
    assert (small.search.n_calls, small.training.epochs) == (2, 1)
    assert small.data.synthetic.patients <= 200 and small.name == "demo-smoke"
    assert small.storage != study.storage


@pytest.mark.parametrize("override, expected", [
    ("seeds=[-1]", "seeds[0]: Input should be greater than or equal to 0"),
    ("seeds=[100000000000000000000000]", "seeds[0]: Input should be less than or equal to "
                                         "4294967295"),
    ("seeds=[true]", "seeds[0]: Input should be a valid integer, got True"),
    ("search.n_calls=100000000000", "search.n_calls: Input should be less than or equal to 10000"),
    ("search.n_calls=1.0e+11", "search.n_calls: Input should be a valid integer, got "
                               "100000000000.0"),
    ("search.random_state=-1", "search.random_state: Input should be greater than or equal to 0"),
    ("training.epochs=1000000000000", "training.epochs: Input should be less than or equal to "
                                      "10000"),
    ("training.epochs=true", "training.epochs: Input should be a valid integer, got True"),
    ("training.batch_size=8.0", "training.batch_size: Input should be a valid integer, got 8.0"),
    ("resources.cpu=true", "resources.cpu: Input should be a valid number, got True"),
    ("resources.max_failures=100000", "resources.max_failures: Input should be less than or "
                                      "equal to 1000"),
    ("data.synthetic.seed=-5", "data.synthetic.seed: Input should be greater than or equal to 0"),
])
def test_numbers_are_bounded_and_strict(tmp_path, override, expected):
    message = refused(write(tmp_path), (override,))
    assert message.endswith(expected) or f"{expected};" in message


def test_validate_prints_trials_and_estimated_cost(tmp_path, capsys, monkeypatch):
    import pandas as pd

    from raybench.cli import main

    storage = tmp_path / "results"
    path = write(tmp_path, {"storage": str(storage), "seeds": [0, 1],
                            "search": {"type": "gp", "n_calls": 4, "n_initial_points": 2},
                            "training": {"epochs": 5, "max_train_batches": 10}})
    monkeypatch.setattr("raybench.study.estimate.EPOCH_COSTS", tmp_path / "none.csv")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "size: 16 trials (8 per experiment: configurations x seeds), at most 5 epochs" in out
    assert "estimated cost: unknown" in out
    # Measured costs: the per-batch table (CPU) for ehr_lstm, this study's trials for medfuse.
    table = tmp_path / "costs.csv"
    table.write_text("# measured\nmethod,cxr_backbone,crop,device,epoch_overhead_s,"
                     "seconds_per_batch\nehr_lstm,-,0,cpu,0.4,0.32\n")
    monkeypatch.setattr("raybench.study.estimate.EPOCH_COSTS", table)
    storage.mkdir()
    pd.DataFrame({"task": ["mortality"] * 2, "cohort": ["base"] * 2,
                  "method": ["medfuse"] * 2, "status": ["ok", "ok"],
                  "runtime_s": [20.0, 40.0], "epochs_run": [2, 2]}).to_parquet(
        storage / "trials.parquet")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    # ehr_lstm: 8 trials x 5 epochs x (0.4 s + 10 batches x 0.32 s) = 144 s;
    # medfuse: 8 trials x 5 epochs x 15 s (its own trials: 20 s and 40 s over 2 epochs) = 600 s
    assert ("estimated cost: at most 0.21 trial-hours, 0.00 GPU-hours (upper bound: every "
            "trial runs all its epochs) for 2 of 2 experiments") in out
    assert "CPU costs in costs.csv" in out and "this study's trials" in out
