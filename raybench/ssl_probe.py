"""Linear probes on cached frozen features: how good is a pretraining checkpoint for a task?

MedMod selects the pretraining epoch by probing every saved checkpoint on validation
(``model_selection.py``). Here each checkpoint's encoders run once over the probe samples
(no augmentation, eval mode) -- the CXR encoder once per distinct image and the EHR encoder
once per distinct input window, both shared by every task and cohort -- and the features are
cached; then a linear layer
is fitted per (task, cohort, modality) on the cached features with Adam, the learning rate
divided by 10 at each ``milestones`` fraction of the epochs, and early stopping on the
task's validation selection metric (never test). Its best validation score is the
checkpoint's score for that task. Features follow
:func:`raybench.models.ssl_base.combine_features`: ``multimodal`` = ``[ehr, cxr, present]``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from raybench.data import LoaderConfig, PreparedTask, ehr_batch, ehr_windows, image_batch
from raybench.metrics import higher_is_better
from raybench.models.base import task_loss
from raybench.models.ssl_base import combine_features
from raybench.report.stats import selection_scorer
from raybench.tasks import get_task

__all__ = ["CheckpointProber", "ProbeConfig", "ProbeSet", "fit_probe", "probe_key",
           "probe_sets"]


@dataclass(frozen=True)
class ProbeConfig:
    """Linear-probe settings (the study's ``ssl.probe``)."""

    epochs: int = 100
    patience: int = 10
    lr: float = 1e-3
    batch_size: int = 256
    milestones: tuple[float, ...] = (0.6, 0.8)
    max_train_samples: int | None = 10000
    max_val_samples: int | None = 10000


@dataclass
class ProbeSet:
    """The probe samples of one task and cohort (train and validation indices of ``data``)."""

    task: str
    cohort: str
    data: PreparedTask
    train: np.ndarray
    val: np.ndarray


def probe_key(task: str, cohort: str, modality: str) -> str:
    """``"<task>|<cohort>|<modality>"``: how probe scores are keyed."""
    return f"{task}|{cohort}|{modality}"


def _cap(data: PreparedTask, idx: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """At most ``limit`` of ``idx``: those whose EHR window has the smallest seeded
    pseudo-random priority. Tasks and cohorts with the same windows (decompensation and length
    of stay; base and matched) thus keep the same samples and share cached features."""
    if limit is None or len(idx) <= limit:
        return idx
    end = data.ehr_start[idx].astype(np.uint64) + data.n_steps[idx].astype(np.uint64)
    priority = (end * np.uint64(2654435761) + np.uint64(seed * 97 + 13)) % np.uint64(2**32)
    return np.sort(idx[np.argsort(priority, kind="stable")[:limit]])


def probe_sets(datasets: Mapping[str, PreparedTask], tasks: Iterable[str],
               cohorts: Iterable[str], cfg: ProbeConfig, seed: int = 0) -> list[ProbeSet]:
    """Train/validation samples of every (task, cohort), capped (see :func:`_cap`)."""
    sets = []
    for task in tasks:
        data = datasets[task]
        for cohort in cohorts:
            split = {}
            for name, limit in (("train", cfg.max_train_samples), ("val", cfg.max_val_samples)):
                idx = data.indices(name)
                if cohort == "matched":
                    idx = idx[data.image_row[idx] >= 0]
                split[name] = _cap(data, idx, limit, seed)
            sets.append(ProbeSet(task, cohort, data, split["train"], split["val"]))
    return sets


def _labels(data: PreparedTask, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(data.y[idx]))


def _scores(kind: str, logits: torch.Tensor) -> np.ndarray:
    if kind == "multiclass":
        return torch.softmax(logits, dim=1).numpy()
    prob = torch.sigmoid(logits).numpy()
    return prob[:, 0] if kind == "binary" else prob


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
              val_y: torch.Tensor, task: str, n_outputs: int, cfg: ProbeConfig,
              seed: int = 0) -> float:
    """Best validation selection metric of a linear layer trained on ``train_x`` (NaN when it
    is undefined on this validation set, e.g. a single class, or there is no sample)."""
    spec = get_task(task)
    kind = spec.kind
    if len(train_x) == 0 or len(val_x) == 0:
        return math.nan
    scorer = selection_scorer(kind, spec.selection_metric)
    y_val = val_y.numpy()
    y_val = y_val[:, 0] if kind == "binary" else y_val
    sign = 1.0 if higher_is_better(spec.selection_metric) else -1.0
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # leave the caller's (training) RNG untouched
        torch.manual_seed(seed)
        layer = nn.Linear(train_x.shape[1], n_outputs)
    optimizer = torch.optim.Adam(layer.parameters(), lr=cfg.lr)
    best, waited = -math.inf, 0
    for epoch in range(cfg.epochs):
        decays = sum(1 for m in cfg.milestones if epoch >= int(m * cfg.epochs))
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * 0.1 ** decays
        order = torch.randperm(len(train_x), generator=gen)
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            loss = task_loss(layer(train_x[batch]), train_y[batch], kind)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            value = scorer(y_val, _scores(kind, layer(val_x)))
        score = sign * value if math.isfinite(value) else -math.inf
        if score > best:
            best, waited = score, 0
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    return sign * best if math.isfinite(best) else math.nan


class CheckpointProber:
    """Scores a model state: ``{probe_key(task, cohort, modality): validation score}``.

    ``modalities``: ``multimodal``, ``ehr``, ``cxr`` (``cxr`` on the matched cohort only).
    ``seconds`` accumulates the time spent (feature extraction and probe fitting).
    """

    def __init__(self, sets: list[ProbeSet], modalities: Iterable[str], cfg: ProbeConfig,
                 loader: LoaderConfig, seed: int = 0, device: str | torch.device = "cpu"):
        self.sets, self.cfg, self.seed, self.device = sets, cfg, seed, torch.device(device)
        self.modalities = tuple(modalities)
        self.loader = replace(loader, batch_size=max(cfg.batch_size, loader.batch_size),
                              augment=False)
        self.seconds = 0.0

    @torch.no_grad()
    def _cxr_table(self, model) -> tuple[np.ndarray, torch.Tensor]:
        """CXR features of every image a probe sample uses, computed once per image row:
        ``(lookup, features)`` with ``features[lookup[row]]`` the row's feature."""
        used = [s.data.image_row[idx] for s in self.sets for idx in (s.train, s.val)]
        rows = np.unique(np.concatenate(used)) if used else np.zeros(0, np.int64)
        rows = rows[rows >= 0]
        lookup = np.full(int(rows.max()) + 1 if len(rows) else 0, -1, dtype=np.int64)
        lookup[rows] = np.arange(len(rows))
        parts = []
        if len(rows):
            data = self.sets[0].data  # every task of a dataset shares the image array
            crop = self.loader.crop or max(8, data.image_size * 7 // 8)
            for start in range(0, len(rows), self.loader.batch_size):
                chunk = rows[start:start + self.loader.batch_size]
                cxr = image_batch(data.images, chunk, crop, self.device)
                present = torch.ones(len(chunk), dtype=torch.bool, device=self.device)
                parts.append(model.cxr_features(cxr, present).float().cpu())
        return lookup, torch.cat(parts) if parts else torch.zeros(0, 1)

    @torch.no_grad()
    def _ehr_table(self, model) -> tuple[np.ndarray, torch.Tensor]:
        """EHR features of every distinct input window of the probe samples (tasks and cohorts
        that share a window -- decompensation and length of stay, base and matched -- share
        its feature): ``(sorted window keys, features)``. With a causal EHR encoder
        (``ehr_step_features``) the windows that start on the same row -- the hourly samples
        of a stay -- are prefixes of one sequence and come from one pass over it."""
        data = self.sets[0].data  # every task of a dataset shares the EHR matrix
        keys = np.unique(np.concatenate([self._window_keys(s, idx) for s in self.sets
                                         for idx in (s.train, s.val)]))
        span = self.loader.max_len + 1
        start, steps = keys // span, keys % span
        batch = self.loader.batch_size
        probe = ehr_batch(data.ehr, start[:1], steps[:1]).to(self.device)
        causal = len(keys) > 0 and model.ehr_step_features(
            probe, torch.from_numpy(steps[:1]).to(self.device)) is not None
        if not causal:
            parts = []
            for i in range(0, len(keys), batch):
                x = ehr_batch(data.ehr, start[i:i + batch], steps[i:i + batch]).to(self.device)
                lengths = torch.from_numpy(steps[i:i + batch]).to(self.device)
                parts.append(model.ehr_features(x, lengths).float().cpu())
            return keys, torch.cat(parts) if parts else torch.zeros(0, 1)
        # keys are sorted by (start, steps): each start's longest window is its last key
        starts, first = np.unique(start, return_index=True)
        longest = steps[np.r_[first[1:], len(keys)] - 1]
        group = np.searchsorted(starts, start)
        feats = None
        for i in range(0, len(starts), batch):
            x = ehr_batch(data.ehr, starts[i:i + batch], longest[i:i + batch]).to(self.device)
            lengths = torch.from_numpy(longest[i:i + batch]).to(self.device)
            out = model.ehr_step_features(x, lengths).float().cpu()
            members = np.flatnonzero((group >= i) & (group < i + batch))
            if feats is None:
                feats = torch.zeros(len(keys), out.shape[-1])
            feats[torch.from_numpy(members)] = out[torch.from_numpy(group[members] - i),
                                                   torch.from_numpy(steps[members] - 1)]
        return keys, feats

    def _window_keys(self, s: ProbeSet, idx: np.ndarray) -> np.ndarray:
        start, steps = ehr_windows(s.data, idx, self.loader.max_len)
        return start * (self.loader.max_len + 1) + steps

    def _parts(self, s: ProbeSet, idx: np.ndarray, ehr_table: tuple[np.ndarray, torch.Tensor],
               cxr_table: tuple[np.ndarray, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keys, ehr_feats = ehr_table
        ehr = ehr_feats[torch.from_numpy(np.searchsorted(keys, self._window_keys(s, idx)))]
        lookup, feats = cxr_table
        rows = s.data.image_row[idx]
        present = rows >= 0
        cxr = torch.zeros(len(idx), feats.shape[1])
        if present.any():
            cxr[torch.from_numpy(present)] = feats[torch.from_numpy(lookup[rows[present]])]
        return ehr, cxr, torch.from_numpy(present)

    def __call__(self, model) -> dict[str, float]:
        """Probe scores of ``model`` in its current state (left in eval mode)."""
        started = time.perf_counter()
        model.eval()
        cxr_table, ehr_table = self._cxr_table(model), self._ehr_table(model)
        scores = {}
        for s in self.sets:
            train = self._parts(s, s.train, ehr_table, cxr_table)
            val = self._parts(s, s.val, ehr_table, cxr_table)
            for modality in self.modalities:
                if modality == "cxr" and s.cohort != "matched":
                    continue
                x_train = combine_features(modality, *train)
                x_val = combine_features(modality, *val)
                scores[probe_key(s.task, s.cohort, modality)] = fit_probe(
                    x_train, _labels(s.data, s.train), x_val, _labels(s.data, s.val), s.task,
                    s.data.n_outputs, self.cfg, self.seed)
        self.seconds += time.perf_counter() - started
        return scores
