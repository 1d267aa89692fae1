"""Choosing a run's best checkpoint by ``--best-metric`` and stopping it early by
``--patience``: which figure of an evaluation counts, and whether it improved.

:func:`metric_value` reads a dotted path (``segm.AP``, ``layout.region_f1``,
``segm.per_class.staff``) out of an evaluation's metrics (metrics.json's shape);
:class:`Selection` keeps the best value so far and decides the early stop. Which
evaluations a path needs is the evaluators registry's to say
(:func:`maskdla.evaluation.evaluators.evaluators_for`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from maskdla.errors import InputError

__all__ = ["Selection", "metric_value"]


@dataclass
class Selection:
    """Model selection by ``--best-metric``: the best value so far, where it was reached,
    evaluations since, and why the run stops early (``--patience``). A checkpoint carries
    it (``dataclasses.asdict``), so a resumed run selects on."""

    best: Optional[float] = None
    best_iteration: Optional[int] = None
    since_best: int = 0
    stop_reason: Optional[str] = None
    #: (iteration, split) of the last evaluation, and its metrics
    last: Optional[Dict[str, Any]] = None

    def record(self, value: float, iteration: int, best_metric: str, patience: int) -> bool:
        """Record the value an evaluation at ``iteration`` gave ``best_metric``.

        Returns True when it is the best so far (higher is better; a tie is no
        improvement). ``patience`` (0: never) evaluations in a row without one set
        :attr:`stop_reason`.
        """
        if self.best is None or value > self.best:
            self.best, self.best_iteration, self.since_best = value, iteration, 0
            return True
        self.since_best += 1
        if patience and self.since_best >= patience:
            self.stop_reason = (
                f"early stop at iteration {iteration}: {best_metric} did not improve on "
                f"{self.best:.2f} (iteration {self.best_iteration}) for {patience} evaluations")
        return False


def metric_value(metrics: Dict[str, Any], path: str) -> float:
    """The figure at dotted ``path`` (``segm.AP``, ``bbox.AP50``, ``segm.per_class.staff``)
    of a metrics.json dict; -inf for a figure that is undefined on the pages (null), so
    that it ranks lowest. InputError naming the path and the keys there otherwise."""
    value: Any = metrics
    for depth, key in enumerate(path.split(".")):
        if not isinstance(value, dict) or key not in value:
            where = ".".join(path.split(".")[:depth]) or "metrics.json"
            keys = ", ".join(sorted(value)) if isinstance(value, dict) else "none"
            raise InputError(f"--best-metric {path}: {where} has no {key!r} (keys: {keys})")
        value = value[key]
    if value is None:  # undefined on these pages (a layout figure with nothing to count)
        return float("-inf")
    if not isinstance(value, (int, float)):
        raise InputError(f"--best-metric {path}: not a number but {type(value).__name__}")
    return float(value)
