"""Small test sets: how many positives a figure rests on, and the flag when they are too few.

A ranking metric (AUROC, AUPRC), a bootstrap CI or a permutation p-value computed on a handful
of positives looks as precise as any other number in a table. The report therefore states the
test class counts of every table and marks with :data:`FLAG` every figure that rests on fewer
than ``min_positives`` (default 10) samples of the rarer class: positives (or negatives, if
those are rarer) for a binary task, the rarest evaluated label for a multilabel task.
Multiclass tasks show their smallest class but are not flagged (their metrics do not hinge on
one class).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FLAG", "ClassCounts", "class_counts", "flag_text"]

FLAG = "†"


@dataclass(frozen=True)
class ClassCounts:
    """Test class counts: ``positives`` per label (binary: one; multiclass: per class)."""

    kind: str
    n: int
    positives: tuple[int, ...]

    @property
    def rarest(self) -> int:
        """Samples of the rarer class (binary), of the rarest evaluated label's rarer class
        (multilabel: labels with both classes), or of the smallest class (multiclass)."""
        if self.kind == "multiclass":
            return min(self.positives) if self.positives else 0
        both = [min(p, self.n - p) for p in self.positives if 0 < p < self.n]
        return min(both) if both else 0

    def is_small(self, min_positives: int) -> bool:
        """True when figures on these samples must be flagged (never for multiclass)."""
        return self.kind != "multiclass" and self.rarest < min_positives

    def text(self) -> str:
        """``13 test samples, 1 positive`` (binary) and the like."""
        if self.kind == "binary":
            pos = self.positives[0]
            return f"{self.n:,} test samples, {pos:,} positive{'s' if pos != 1 else ''}"
        if self.kind == "multilabel":
            pos = np.asarray(self.positives)
            return (f"{self.n:,} test samples, positives per label: min {int(pos.min()):,}, "
                    f"median {float(np.median(pos)):g}, max {int(pos.max()):,}")
        return f"{self.n:,} test samples, smallest class {self.rarest:,}"


def class_counts(kind: str, y_true: np.ndarray) -> ClassCounts:
    """Class counts of the test labels of a prediction set."""
    y_true = np.asarray(y_true)
    if kind == "binary":
        positives = (int((y_true == 1).sum()),)
    elif kind == "multilabel":
        positives = tuple(int(v) for v in (y_true == 1).sum(axis=0))
    else:
        classes = np.unique(y_true)
        positives = tuple(int((y_true == c).sum()) for c in classes)
    return ClassCounts(kind, int(len(y_true)), positives)


def flag_text(min_positives: int) -> str:
    """The caption sentence explaining :data:`FLAG`."""
    return (f"{FLAG}: rests on fewer than {min_positives} test samples of the rarer class "
            "(positives, or negatives if rarer; for multilabel tasks the rarest label): too "
            "few for a stable estimate, read it as indicative only.")
