"""Reading a study directory: ``resolved_study.yaml``, ``trials.parquet``, ``predictions/``.

Nothing here retrains or recomputes a trial: the report is built from what the study runner
wrote. :func:`load_study` checks the layout and the columns up front and raises
:class:`~raybench.errors.RaybenchError` naming the missing file or column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from raybench.data import GROUP_COLUMNS
from raybench.errors import RaybenchError
from raybench.ownership import safe_relpath

__all__ = ["PredictionSet", "Study", "load_study", "probability_arrays"]

REQUIRED_COLUMNS = (
    "trial_id", "experiment_id", "task", "kind", "label_names", "cohort", "method",
    "modalities", "missing_ratio", "config_id", "seed", "params", "status", "selection_metric",
)
OPTIONAL_COLUMNS = {
    "error": None, "runtime_s": np.nan, "cpu": np.nan, "gpu": np.nan,
    "n_parameters": np.nan, "inference_s_per_batch": np.nan, "predictions_file": None,
}
IDENTIFIER_COLUMNS = frozenset({"subject_id", "hadm_id", "stay_id", "dicom_id", "study_id"})


@dataclass
class PredictionSet:
    """Test predictions of one configuration, one entry per seed, aligned on ``sample``.

    ``probs`` is ``[S, N]`` (binary), ``[S, N, K]`` (multilabel) or ``[S, N, C]`` (multiclass);
    ``y_true`` is shared by the seeds; ``groups`` holds the subgroup columns in sample order.
    """

    kind: str
    seeds: list[int]
    sample: np.ndarray
    y_true: np.ndarray
    probs: np.ndarray
    groups: pd.DataFrame

    def seed_mean(self) -> np.ndarray:
        """Per-sample probabilities averaged over the seeds (the seed ensemble)."""
        return self.probs.mean(axis=0)

    def subset(self, samples: np.ndarray) -> PredictionSet:
        """The same predictions restricted to ``samples`` (kept in the given order)."""
        pos = pd.Index(self.sample).get_indexer(samples)
        return PredictionSet(self.kind, self.seeds, self.sample[pos], self.y_true[pos],
                             self.probs[:, pos], self.groups.iloc[pos].reset_index(drop=True))


@dataclass
class Study:
    """A loaded study directory: its resolved configuration and its trials table."""

    root: Path
    config: dict
    trials: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """The study's name from ``resolved_study.yaml`` (else the directory name)."""
        return str(self.config.get("name") or self.root.name)

    @property
    def expected_seeds(self) -> list[int] | None:
        """The seeds the study asks for (``resolved_study.yaml``), or None when unknown."""
        seeds = self.config.get("seeds")
        if not isinstance(seeds, list) or not seeds:
            return None
        try:
            return [int(s) for s in seeds]
        except (TypeError, ValueError):
            return None

    def section(self, key: str) -> dict:
        """A mapping section of ``resolved_study.yaml`` (empty when absent)."""
        value = self.config.get(key)
        return value if isinstance(value, dict) else {}

    def read_predictions(self, row: pd.Series) -> pd.DataFrame | None:
        """The predictions frame of one trial row, or None when the file is absent."""
        given = row.get("predictions_file")
        if not isinstance(given, str) or not given:
            given = f"predictions/{row['trial_id']}.parquet"
        rel = safe_relpath(given)
        if rel is None:  # trials.parquet is data from the study directory: never trusted
            raise RaybenchError(
                f"{self.root / 'trials.parquet'}: trial {row['trial_id']}: predictions_file "
                f"{given!r} is not a relative path inside the study directory (absolute "
                "paths and '..' are refused)")
        path = self.root / rel
        if not path.is_file():
            return None
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise RaybenchError(f"{path}: cannot read ({exc})") from exc
        kind = str(row["kind"])
        truth = ["y_true"] if kind == "multiclass" else ["y_true_0"]
        missing = [c for c in ["sample", "prob_0", *truth] if c not in frame.columns]
        if missing:
            raise RaybenchError(f"{path}: missing columns {', '.join(missing)}")
        return frame.drop(columns=[c for c in frame.columns if c in IDENTIFIER_COLUMNS])

    def predictions(self, rows: pd.DataFrame) -> PredictionSet | None:
        """Aligned predictions of the trial ``rows`` (one configuration, one row per seed).

        Returns None when any seed's file is missing or when the seeds share no sample.
        Samples present in every seed are kept, sorted by ``sample``; ``y_true`` is taken
        from the first seed and seeds whose labels disagree are dropped.
        """
        key = tuple(sorted(rows["trial_id"]))
        if key in self._cache:
            return self._cache[key]
        rows = rows.sort_values("seed")
        frames = [self.read_predictions(r) for _, r in rows.iterrows()]
        result = None
        if frames and all(f is not None for f in frames):
            result = _align(str(rows["kind"].iloc[0]), list(rows["seed"]), frames)
        self._cache[key] = result
        return result


def probability_arrays(kind: str, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true, y_prob)`` from a predictions frame in the metrics module's shapes."""
    prob_cols = sorted((c for c in frame.columns if c.startswith("prob_")),
                       key=lambda c: int(c.split("_")[1]))
    if not prob_cols:
        raise RaybenchError("predictions file has no prob_<k> columns")
    prob = frame[prob_cols].to_numpy(np.float64)
    if kind == "multiclass":
        return frame["y_true"].to_numpy(np.int64), prob
    y_cols = [f"y_true_{c.split('_')[1]}" for c in prob_cols]
    missing = [c for c in y_cols if c not in frame.columns]
    if missing:
        raise RaybenchError(f"predictions file lacks columns {missing}")
    y_true = frame[y_cols].to_numpy(np.int64)
    if kind == "binary":
        return y_true[:, 0], prob[:, 0]
    return y_true, prob


def _align(kind: str, seeds: list[int], frames: list[pd.DataFrame]) -> PredictionSet | None:
    frames = [f.sort_values("sample", kind="stable").drop_duplicates("sample") for f in frames]
    common = frames[0]["sample"].to_numpy()
    for frame in frames[1:]:
        common = np.intersect1d(common, frame["sample"].to_numpy())
    if common.size == 0:
        return None
    arrays = []
    for frame in frames:
        frame = frame.set_index("sample").loc[common].reset_index()
        arrays.append(probability_arrays(kind, frame))
    y_true = arrays[0][0]
    keep = [i for i, (y, _) in enumerate(arrays) if np.array_equal(y, y_true)]
    base = frames[0].set_index("sample").loc[common].reset_index()
    groups = pd.DataFrame(index=range(common.size))
    for column in GROUP_COLUMNS:
        values = base[column] if column in base.columns else pd.Series(["unknown"] * common.size)
        groups[column] = values.astype(object).where(values.notna(), "unknown").astype(str)
    return PredictionSet(kind, [seeds[i] for i in keep], common, y_true,
                         np.stack([arrays[i][1] for i in keep]), groups)


def _read_config(root: Path) -> tuple[dict, list[str]]:
    path = root / "resolved_study.yaml"
    if not path.is_file():
        return {}, [f"`{path.name}` not found: defaults used (fairness min_group_size 10, "
                    "missingness splits unknown)."]
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RaybenchError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(config, dict):
        raise RaybenchError(f"{path}: expected a mapping at the top level")
    return config, []


def _normalise(trials: pd.DataFrame, path: Path) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in trials.columns]
    if missing:
        raise RaybenchError(f"{path}: missing columns {', '.join(missing)}")
    if trials.empty:
        raise RaybenchError(f"{path}: no trials")
    trials = trials.copy()
    for column, default in OPTIONAL_COLUMNS.items():
        if column not in trials.columns:
            trials[column] = default
    for column in ("trial_id", "experiment_id", "task", "kind", "cohort", "method",
                   "modalities", "params", "selection_metric", "label_names"):
        trials[column] = trials[column].astype(str)
    trials["status"] = trials["status"].astype(str).str.lower()
    for column in ("missing_ratio", "config_id", "seed"):
        values = pd.to_numeric(trials[column], errors="coerce")
        if values.isna().any():
            raise RaybenchError(f"{path}: column {column} has missing or non-numeric values")
        trials[column] = values
    trials["missing_ratio"] = trials["missing_ratio"].astype(np.float64).round(6)
    trials["config_id"] = trials["config_id"].astype(np.int64)
    trials["seed"] = trials["seed"].astype(np.int64)
    for column in ("runtime_s", "cpu", "gpu", "n_parameters", "inference_s_per_batch"):
        trials[column] = pd.to_numeric(trials[column], errors="coerce").astype(np.float64)
    trials["label_names"] = trials["label_names"].where(
        ~trials["label_names"].isin(["None", "nan", ""]), "[]")
    for value in trials["label_names"].unique():
        try:
            json.loads(value)
        except json.JSONDecodeError as exc:
            raise RaybenchError(f"{path}: label_names {value!r} is not a JSON list") from exc
    trials["multimodal"] = trials["modalities"].str.contains("+", regex=False)
    return trials.sort_values(["experiment_id", "config_id", "seed", "trial_id"],
                              kind="stable").reset_index(drop=True)


def load_study(study_dir: Path | str) -> Study:
    """Load and check a study directory; RaybenchError names what is missing."""
    root = Path(study_dir)
    if not root.is_dir():
        raise RaybenchError(f"study directory not found: {root}")
    path = root / "trials.parquet"
    if not path.is_file():
        raise RaybenchError(f"trials.parquet not found: {path} (is {root} a study directory?)")
    try:
        trials = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise RaybenchError(f"{path}: cannot read ({exc})") from exc
    config, notes = _read_config(root)
    return Study(root=root, config=config, trials=_normalise(trials, path), notes=notes)
