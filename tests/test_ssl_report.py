"""Report section 8: SSL rows in MedMod's Tables 4-6 layout next to the best supervised
method, and the pretraining runs and chosen checkpoints from ``pretraining.json``."""

from __future__ import annotations

import json

import pandas as pd
from report_fixture import make_study_dir

from raybench.report.build import _header
from raybench.report.context import ReportContext, ReportOptions
from raybench.report.load import load_study
from raybench.report.ssl_section import ssl_section
from raybench.report.tables import mean_sd


def _add_ssl_rows(path) -> None:
    """Copy two experiments of the fixture as SSL downstream experiments (same predictions)."""
    trials = pd.read_parquet(path / "trials.parquet")
    extra = []
    for source, method, modalities in (("medfuse", "convirt/linear/multimodal", "cxr+ehr"),
                                       ("ehr_lstm", "convirt/finetune/ehr", "ehr")):
        rows = trials[(trials.method == source) & (trials.missing_ratio == 0)].copy()
        rows["method"], rows["modalities"] = method, modalities
        rows["experiment_id"] = rows["experiment_id"].str.replace(source, method)
        rows["trial_id"] = rows["trial_id"].str.replace(source, method.replace("/", "."))
        extra.append(rows)
    pd.concat([trials, *extra]).to_parquet(path / "trials.parquet", index=False)
    run = {"key": "0123456789abcdef", "method": "convirt", "config_id": 0, "seed": 0,
           "params": {"ssl_lr": 0.05}, "best_epoch": 20, "best_val_ssl_loss": 3.1,
           "epochs_run": 30, "checkpoints": [10, 20, 30], "pretrain_seconds": 60.0,
           "probe_seconds": 4.0, "seconds_per_epoch": 2.0}
    choice = {"config_id": 0, "params": {"ssl_lr": 0.05}, "by": "probe", "val_score": 0.41,
              "seeds": {"0": {"artifact": run["key"], "epoch": 20, "val_score": 0.41}}}
    (path / "pretraining.json").write_text(json.dumps({
        "runs": [run], "failed_runs": 0,
        "selection": {"convirt": {"mortality|base|multimodal": choice}}}))


def test_ssl_section_next_to_the_best_supervised_method(tmp_path):
    study = make_study_dir(tmp_path / "study")
    plain = ReportContext(load_study(study), ReportOptions(n_bootstrap=20, n_permutations=20))
    assert ssl_section(plain) == []  # no SSL experiment, no section
    assert "Self-supervised" not in "\n".join(_header(plain))
    _add_ssl_rows(study)
    ctx = ReportContext(load_study(study), ReportOptions(n_bootstrap=20, n_permutations=20))
    assert "8. Self-supervised pretraining" in "\n".join(_header(ctx))  # in the contents
    section = "\n".join(ssl_section(ctx))
    assert section.startswith("## 8. Self-supervised pretraining")
    for title in ("### Table 4 layout: multimodal — base cohort",
                  "### Table 5 layout: EHR only — base cohort",
                  "### Pretraining runs", "### Chosen pretraining checkpoints"):
        assert title in section, title
    table4 = section.split("### Table 4 layout: multimodal — base cohort")[1].split("###")[0]
    assert "| convirt linear |" in table4 and "| best supervised |" in table4
    # the best supervised multimodal method by validation is medfuse in the fixture
    assert "mortality: medfuse" in table4
    table5 = section.split("EHR only — base cohort")[1].split("###")[0]
    assert "| convirt finetune |" in table5 and "mortality: ehr_lstm" in table5
    # the copied experiment shows its source's test AUROC (mean ± SD over the seeds)
    rows = ctx.experiments("mortality", "base")
    source = ctx.seed_rows(rows[rows.method == "medfuse"].iloc[0])["test_auroc"]
    convirt = next(line for line in table4.splitlines() if line.startswith("| convirt linear"))
    assert convirt.split("|")[2].strip() == mean_sd(source.to_numpy())[2]
    assert "| convirt | 0 | ssl_lr 0.05 | 0 | 30 | 20 | 3.1000 |" in section
    assert "| convirt | mortality | base | multimodal | 0 | probe | 0.410 | 0: 20 |" in section
