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

The network is admitted with a stricter test than the linear model, because it is tried on every output
at once: a false admission costs the most on the long horizons, where a few blocks decide, and 48 outputs
(x seeds, x fine-tunes) give chance many tries. Its p-values (Student t with blocks - 1 degrees of
freedom) go through Holm's step-down procedure at a family-wise level `network_alpha` over the outputs
tested. bench/model.py measured what a plain t > 2 did: on one planted market in one seed of four, the
network was admitted on a leader's 200 s output on ~8 blocks and cost 0.034 of skill on the next hours.
The linear test keeps t > t_min: its evidence pools the out-of-fold forecasts of every training hour
(hundreds of blocks), and real signals there stand at t of 2.5 to 35.

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
    network_alpha: float = 0.05,
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
    prior = prior or {}
    bases, skills, t_lins, t_nets, p_nets, names = [], [], [], [], [], []
    for j, (product, h) in enumerate(output_keys(products, horizons)):
        name = f"{product}:{h}"
        block = -(-block_size(h) // max(1, spacing_s))
        yj, lj = y[:, j], np.asarray(linear[:, j], np.float64)
        ey, el = (yj, lj) if linear_evidence is None else _pooled(yj, lj, linear_evidence, j)
        t_lin, _ = dm_statistic(ey**2, (ey - el) ** 2, block)
        skill = {PERSISTENCE: 0.0, LINEAR: _skill(yj, lj)}
        if prior.get(name) in (LINEAR, NETWORK):
            base = PERSISTENCE if t_lin < -t_min else LINEAR
        else:
            base = LINEAR if t_lin > t_min else PERSISTENCE
        t_net, p_net = float("nan"), 1.0
        if network is not None:
            nj = np.asarray(network[:, j], np.float64)
            skill[NETWORK] = _skill(yj, nj)
            ref = lj if base == LINEAR else np.zeros_like(yj)
            t_net, n_blocks = dm_statistic((yj - ref) ** 2, (yj - nj) ** 2, block)
            p_net = one_sided_p(t_net, n_blocks)
        names.append(name)
        bases.append(base)
        skills.append(skill)
        t_lins.append(t_lin)
        t_nets.append(t_net)
        p_nets.append(p_net)
    admitted = holm(np.array(p_nets), network_alpha) if network is not None else np.zeros(len(names), bool)
    out = []
    for name, base, skill, t_lin, t_net, ok in zip(
        names, bases, skills, t_lins, t_nets, admitted, strict=True
    ):
        choice = base
        if network is not None:
            # The champion's network outputs stay unless the evidence is significantly against them.
            keep = t_net > -t_min if prior.get(name) == NETWORK else bool(ok)
            choice = NETWORK if keep else base
        out.append(Decision(name, choice, t_lin, t_net, skill))
    return out


def one_sided_p(t: float, n_blocks: int) -> float:
    """P(T >= t) for Student's t with n_blocks - 1 degrees of freedom (1 when there are too few blocks)."""
    from scipy import stats  # here: the registry and the CLI read decisions without testing anything

    if n_blocks < MIN_BLOCKS or t == -np.inf:
        return 1.0
    if t == np.inf:
        return 0.0
    return float(stats.t.sf(t, df=n_blocks - 1))


def holm(p: np.ndarray, alpha: float) -> np.ndarray:
    """Which hypotheses Holm's step-down procedure rejects at family-wise level `alpha`: the k-th smallest
    p-value (from 0) must be <= alpha / (m - k), and every smaller one must have passed too."""
    m = len(p)
    rejected = np.zeros(m, bool)
    for k, i in enumerate(np.argsort(p, kind="stable")):
        if p[i] > alpha / (m - k):
            break
        rejected[i] = True
    return rejected


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
