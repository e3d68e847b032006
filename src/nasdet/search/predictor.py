"""Accuracy predictor for screening evolution candidates (Once-for-All's accuracy predictor).

A small MLP (scikit-learn ``MLPRegressor``, fixed ``random_state``, inputs and targets
standardised) maps a genotype's features (``space.encode(g)``, a list of floats) to its score.
:func:`~nasdet.search.async_evolution.async_evolution_search` fits it on the first
:meth:`AccuracyPredictor.fit_size` scored records (in the order they were scored), and, for each
child it needs, draws ``screen`` feasible candidates and submits the one predicted best. How well
it ranks is measured on candidates scored after the fit that screened them: :func:`kendall_tau`.

scikit-learn and scipy are imported when first used.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AccuracyPredictor", "kendall_tau"]


@dataclass
class AccuracyPredictor:
    """An MLP regressor from genotype features to score, refitted as scores come in.

    Attributes:
        min_samples: scored records needed for the first fit.
        refit_every: a new fit after this many more scored records.
        screen: candidates drawn per child; the one with the highest prediction is submitted.
        hidden_layer_sizes, solver, alpha, max_iter, random_state: of the ``MLPRegressor``
            (same data, same ``random_state``: the same fit). The defaults suit the few dozen
            samples a search has: L-BFGS with a strong L2 penalty; on the linear toy of
            ``tests/test_async_evolution.py`` (16 to 40 samples, seeds 0-2) they gave a held-out
            Kendall tau of 0.73-0.87 where Adam with ``alpha=1e-4`` gave 0.51-0.70.

    Raises:
        ValueError: a count below its minimum.
    """

    min_samples: int = 20
    refit_every: int = 10
    screen: int = 10
    hidden_layer_sizes: tuple[int, ...] = (64, 64)
    solver: str = "lbfgs"
    alpha: float = 1.0
    max_iter: int = 2000
    random_state: int = 0
    _model: Any = field(default=None, init=False, repr=False)
    _y_mean: float = field(default=0.0, init=False, repr=False)
    _y_std: float = field(default=1.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.min_samples < 2 or self.refit_every < 1 or self.screen < 1:
            raise ValueError(
                "predictor: min_samples must be >= 2, refit_every and screen >= 1, got "
                f"{self.min_samples}, {self.refit_every}, {self.screen}"
            )

    def fit_size(self, scored: int) -> int | None:
        """How many scored records the fit in effect uses once ``scored`` are in: ``None``
        below ``min_samples``, then ``min_samples + k * refit_every`` (the largest not above
        ``scored``)."""
        if scored < self.min_samples:
            return None
        return self.min_samples + (scored - self.min_samples) // self.refit_every * self.refit_every

    def fit(self, features: Sequence[Sequence[float]], scores: Sequence[float]) -> None:
        """Fit on ``features`` (one row per genotype) and their ``scores``."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if len(features) != len(scores) or len(scores) < 2:
            raise ValueError(f"predictor: {len(features)} rows for {len(scores)} scores (>= 2)")
        self._y_mean = sum(scores) / len(scores)
        spread = math.sqrt(sum((y - self._y_mean) ** 2 for y in scores) / len(scores))
        self._y_std = spread or 1.0
        model = make_pipeline(
            StandardScaler(),
            MLPRegressor(
                hidden_layer_sizes=self.hidden_layer_sizes,
                solver=self.solver,
                alpha=self.alpha,
                max_iter=self.max_iter,
                random_state=self.random_state,
            ),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit([list(map(float, x)) for x in features], self._standard(scores))
        self._model = model

    def _standard(self, scores: Sequence[float]) -> list[float]:
        return [(y - self._y_mean) / self._y_std for y in scores]

    def predict(self, features: Sequence[Sequence[float]]) -> list[float]:
        """Predicted scores of ``features`` rows (in the scores' units).

        Raises:
            RuntimeError: not fitted yet.
        """
        if self._model is None:
            raise RuntimeError("predictor: predict before fit")
        out = self._model.predict([list(map(float, x)) for x in features])
        return [float(y) * self._y_std + self._y_mean for y in out]


def kendall_tau(predicted: Sequence[float], true: Sequence[float]) -> float:
    """Kendall's tau-b (ties accounted for) between predicted and true scores, in [-1, 1];
    NaN with fewer than 2 pairs or a constant side."""
    if len(predicted) != len(true):
        raise ValueError(f"kendall_tau: {len(predicted)} predictions for {len(true)} scores")
    if len(true) < 2:
        return math.nan
    from scipy.stats import kendalltau

    return float(kendalltau(predicted, true).statistic)
