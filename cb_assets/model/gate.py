"""The per-output gate: which forecast each output serves (persistence, the linear model or the network).

Why per output and why a test: the 48 outputs differ wildly. A follower at 10 s is predictable, a leader's
own 200 s return is not, and a model that is better on average can still cost skill on the outputs where
it only fits noise. Each output therefore gets the simplest candidate that the evidence does not reject:

    persistence (forecast 0)  <  linear (the ridge on lagged window values)  <  network (linear + residual)

A more complex candidate replaces a simpler one only when its squared-error loss is lower with a
Diebold-Mariano statistic above `t_min` on the pooled held-out windows. The long-run variance of the loss
differential comes from batch means over blocks of 2 x the horizon (at least 20 windows): neighbouring
windows' labels overlap (one per second, horizons of 10-200 s), so the windows are far from independent;
a 200 s output of three held-out tails holds only ~8 blocks, and it takes a large, consistent gain to
pass. With fewer than MIN_BLOCKS blocks nothing passes.

A fine-tune starts from the champion's decisions (`prior`) and moves an output only on significant
evidence either way, so one noisy hour does not flip an output back and forth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cb_assets.model.evaluate import output_keys
from cb_assets.series.schema import HORIZONS_S

PERSISTENCE, LINEAR, NETWORK = "persistence", "linear", "network"
CANDIDATES = (PERSISTENCE, LINEAR, NETWORK)
MIN_BLOCKS = 8


def block_size(horizon_s: int) -> int:
    return max(20, 2 * int(horizon_s))


def dm_statistic(loss_simple: np.ndarray, loss_complex: np.ndarray, block: int) -> tuple[float, int]:
    """(t, blocks): the mean loss reduction of the complex forecast over its batch-means standard error;
    t > 0 when the complex one is better. Windows must be in time order; a NaN loss row is dropped."""
    d = np.asarray(loss_simple, np.float64) - np.asarray(loss_complex, np.float64)
    d = d[np.isfinite(d)]
    n_blocks = len(d) // max(1, block)
    if n_blocks < MIN_BLOCKS:
        return 0.0, n_blocks
    means = d[: n_blocks * block].reshape(n_blocks, block).mean(axis=1)
    se = float(means.std(ddof=1)) / np.sqrt(n_blocks)
    if se == 0.0:
        return (0.0 if means.mean() == 0.0 else float(np.sign(means.mean())) * np.inf), n_blocks
    return float(means.mean() / se), n_blocks


@dataclass(frozen=True)
class Decision:
    output: str  # "PRODUCT:horizon"
    choice: str  # one of CANDIDATES
    t_linear: float  # DM t of linear vs persistence
    t_network: float  # DM t of network vs the choice below it (linear or persistence)
    skill: dict[str, float]  # held-out skill of each candidate on the gate windows

    def to_dict(self) -> dict[str, object]:
        return {
            "output": self.output,
            "choice": self.choice,
            "t_linear": _finite(self.t_linear),
            "t_network": _finite(self.t_network),
            "skill": {k: _finite(v) for k, v in self.skill.items()},
        }


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _skill(y: np.ndarray, p: np.ndarray) -> float:
    den = float(np.mean(y * y))
    return 1.0 - float(np.mean((y - p) ** 2)) / den if den > 0 else float("nan")


def decide(
    labels: np.ndarray,
    linear: np.ndarray,
    network: np.ndarray | None,
    products: Sequence[str],
    *,
    t_min: float = 2.0,
    linear_evidence: tuple[np.ndarray, np.ndarray] | None = None,
    prior: Mapping[str, str] | None = None,
    horizons: Sequence[int] = HORIZONS_S,
    spacing_s: int = 1,
) -> list[Decision]:
    """One decision per output from forecasts on the same held-out windows (rows in time order).

    `linear_evidence` = (labels, forecasts) of extra windows the linear model never trained on (its
    out-of-fold forecasts): the linear-vs-persistence test pools them with the held-out windows.
    `prior` (output -> choice) is kept unless the evidence is significant against it. `spacing_s`: seconds
    between consecutive rows (scored windows may be thinned), so that blocks span the same time.
    """
    y = np.asarray(labels, np.float64)
    out = []
    for j, (product, h) in enumerate(output_keys(products, horizons)):
        name = f"{product}:{h}"
        block = -(-block_size(h) // max(1, spacing_s))
        yj, lj = y[:, j], np.asarray(linear[:, j], np.float64)
        ey, el = (yj, lj) if linear_evidence is None else _pooled(yj, lj, linear_evidence, j)
        t_lin, _ = dm_statistic(ey**2, (ey - el) ** 2, block)
        skill = {PERSISTENCE: 0.0, LINEAR: _skill(yj, lj)}
        was = (prior or {}).get(name)
        if was in (LINEAR, NETWORK):
            base = PERSISTENCE if t_lin < -t_min else LINEAR
        else:
            base = LINEAR if t_lin > t_min else PERSISTENCE
        choice, t_net = base, float("nan")
        if network is not None:
            nj = np.asarray(network[:, j], np.float64)
            skill[NETWORK] = _skill(yj, nj)
            ref = lj if base == LINEAR else np.zeros_like(yj)
            t_net, _ = dm_statistic((yj - ref) ** 2, (yj - nj) ** 2, block)
            keep = t_net > -t_min if was == NETWORK else t_net > t_min
            choice = NETWORK if keep else base
        out.append(Decision(name, choice, t_lin, t_net, skill))
    return out


def _pooled(
    y: np.ndarray, p: np.ndarray, evidence: tuple[np.ndarray, np.ndarray], j: int
) -> tuple[np.ndarray, np.ndarray]:
    ey, ep = evidence
    return np.concatenate([np.asarray(ey[:, j], np.float64), y]), np.concatenate(
        [np.asarray(ep[:, j], np.float64), p]
    )


def gates_of(decisions: Sequence[Decision]) -> tuple[np.ndarray, np.ndarray]:
    """(linear gate, residual gate) per output: the network candidate is linear + its residual."""
    lin = np.array([d.choice in (LINEAR, NETWORK) for d in decisions], np.float32)
    res = np.array([d.choice == NETWORK for d in decisions], np.float32)
    return lin, res


def combine(decisions: Sequence[Decision], linear: np.ndarray, network: np.ndarray | None) -> np.ndarray:
    """The gated forecasts: what the composite model serves for these windows."""
    out = np.zeros_like(np.asarray(linear, np.float32))
    for j, d in enumerate(decisions):
        if d.choice == LINEAR:
            out[:, j] = linear[:, j]
        elif d.choice == NETWORK and network is not None:
            out[:, j] = network[:, j]
    return out


def summary(decisions: Sequence[Decision]) -> dict[str, list[str]]:
    """Outputs per choice: what `cb-assets models list` and the asset's metadata show."""
    return {c: [d.output for d in decisions if d.choice == c] for c in CANDIDATES}
