"""Selection agreement: how often a faster candidate path selects the same noises as the exact one.

RewardSDS uses rewards only to decide which candidates enter the update (min_max: the top n_max get a
positive weight, the bottom n_min a negative one). A faster path (bf16 instead of fp32, a compiled UNet,
a float8 lookahead, a tiny decoder, pruning, fewer lookahead steps) changes the step exactly when it
changes one of those two sets. For draws ``(seed, step, t, latents)`` both paths score the SAME candidate
noises (keyed on seed and step); a draw agrees when the fast path's top-n_max set equals the exact path's
and its bottom-n_min set does too. Orders inside a set do not matter (min_max weighs a set uniformly).

    exact = collect_rewards(engine_selector(exact_engine, text, prompts, n), draws)
    fast = collect_rewards(engine_selector(fast_engine, text, prompts, n), draws)
    report = compare_selections(exact, fast, n_max=2, n_min=2, draws=draws)
    report.agreement        # fraction of draws whose both sets match
    report.agreement_ci95   # its Wilson interval: 6 of 8 draws is anywhere from 41% to 93%
    report.regret_mean      # what the mismatches cost, in the exact path's own rewards (0: a swap of exact ties)
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from rewardsds.strategies import MinMaxStrategy
from rewardsds.strategies.config import MinMaxStrategyConfig


@dataclass(frozen=True)
class Draw:
    """One candidate evaluation: the noises are keyed on (seed, step), the timestep is t.

    Attributes:
        seed: run seed (keys the candidate noises with ``step``).
        step: optimisation step.
        t: diffusion timestep.
        latents: the scene latents [b, c, h, w] the candidates are drawn around.
    """

    seed: int
    step: int
    t: int
    latents: Tensor


#: the agreement a fast path needs to be on by default
DEFAULT_BAR = 0.95

#: a path: draw -> rewards [n] of the draw's candidates
Selector = Callable[[Draw], Tensor]


def selection_sets(rewards: Tensor, n_max: int = 2, n_min: int = 2) -> tuple[frozenset[int], frozenset[int]]:
    """(top, bottom) candidate index sets that ``min_max`` selects from ``rewards`` [n] (its own ranking, ties
    to the lower index), so agreement is measured on exactly what training would use."""
    w = MinMaxStrategy(MinMaxStrategyConfig(n_max=n_max, n_min=n_min))(rewards.detach().float().cpu())
    top = frozenset(torch.nonzero(w > 0).flatten().tolist())
    bottom = frozenset(torch.nonzero(w < 0).flatten().tolist())
    return top, bottom


def _spearman(a: Tensor, b: Tensor) -> float:
    """Rank correlation of two reward vectors (1 = same order); NaN for fewer than 2 candidates."""
    if a.numel() < 2:
        return float("nan")
    ra = torch.argsort(torch.argsort(a, stable=True), stable=True).double()
    rb = torch.argsort(torch.argsort(b, stable=True), stable=True).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a rate ``hits / n`` (95% for the default z): what ``n`` draws can show.

    With every draw agreeing the lower end is ``n / (n + z^2)``, so a claim of at least 95% agreement needs at
    least 73 draws that all agree.
    """
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if hits == 0 else lo), (1.0 if hits == n else hi)  # exact at the ends (no rounding below 1)


def selection_regret(exact: Tensor, top_exact: frozenset[int], bottom_exact: frozenset[int], top_fast: frozenset[int],
                     bottom_fast: frozenset[int]) -> float:
    """What the fast path's sets cost in the exact path's own rewards, over its reward spread.

    The larger of (mean exact reward of the exact top set - that of the fast top set) and (mean exact reward
    of the fast bottom set - that of the exact bottom set), divided by max - min of the exact rewards: 0 when
    the sets match or when a swapped candidate ties the one it replaced; 1 when the fast path took the
    exact path's worst for its best. (The sets are the exact path's optimum, so neither term is negative.)
    """
    spread = float(exact.max() - exact.min())
    if spread <= 0:
        return 0.0

    def mean(idx: frozenset[int]) -> float:
        return float(exact[sorted(idx)].mean()) if idx else 0.0

    return max(mean(top_exact) - mean(top_fast), mean(bottom_fast) - mean(bottom_exact), 0.0) / spread


@dataclass
class AgreementReport:
    """Per-draw matches of a fast path's selections with the exact path's, and their rates.

    Attributes:
        agreement: fraction of draws whose top AND bottom sets both match.
        top_agreement, bottom_agreement: the same for each set alone.
        n_draws: number of draws.
        rank_correlation: mean Spearman correlation of the two reward vectors.
        reward_abs_err_over_spread: median over draws of max |r_fast - r_exact| / (max r_exact - min r_exact):
            how large the fast path's reward error is against the differences that decide a selection.
        per_draw: one dict per draw (seed, step, t, both sets of both paths, matches).
        by_t: agreement per timestep range (``t<250``, ``250<=t<500``, ...; with draws): candidates at small t
            differ little, so near-ties flip there first.
        agreement_ci95: the Wilson 95% interval of ``agreement`` (:func:`wilson_interval`): how far the measured
            rate can be trusted with ``n_draws`` draws.
        regret_mean, regret_max: :func:`selection_regret` over the draws (0 on a matching draw): what the
            mismatches cost in the exact path's rewards, as a fraction of its reward spread.
    """

    agreement: float
    top_agreement: float
    bottom_agreement: float
    n_draws: int
    rank_correlation: float
    reward_abs_err_over_spread: float
    per_draw: list[dict] = field(default_factory=list)
    by_t: dict[str, dict] = field(default_factory=dict)
    agreement_ci95: tuple[float, float] = (0.0, 1.0)
    regret_mean: float = 0.0
    regret_max: float = 0.0

    def bar(self) -> dict[str, bool]:
        """The on-by-default bar (:data:`DEFAULT_BAR`): ``default_ok``, the measured rate reaches it; ``default_shown``,
        its Wilson interval's lower end does too (what 73 or more agreeing draws can show)."""
        return {"default_ok": self.agreement >= DEFAULT_BAR, "default_shown": self.agreement_ci95[0] >= DEFAULT_BAR}

    def to_json(self, per_draw: bool = True) -> dict:
        out = {k: getattr(self, k) for k in ("agreement", "agreement_ci95", "top_agreement", "bottom_agreement", "n_draws",
                                             "rank_correlation", "reward_abs_err_over_spread", "regret_mean", "regret_max", "by_t")}
        out["agreement_ci95"] = list(self.agreement_ci95)
        if per_draw:
            out["per_draw"] = self.per_draw
        return out


def compare_selections(
    exact: Sequence[Tensor],
    fast: Sequence[Tensor],
    n_max: int = 2,
    n_min: int = 2,
    draws: Optional[Sequence[Draw]] = None,
) -> AgreementReport:
    """Compare the selections two paths make from their rewards on the same draws.

    Args:
        exact: rewards [n] per draw of the exact path.
        fast: rewards [n] per draw of the fast path (same draws, same order).
        n_max, n_min: the min_max set sizes (2, 2 in the paper).
        draws: the draws (only their seed, step and t are reported).

    Returns:
        :class:`AgreementReport`.
    """
    if len(exact) != len(fast):
        raise ValueError(f"{len(exact)} exact and {len(fast)} fast reward vectors: compare the same draws")
    if not exact:
        raise ValueError("no draws to compare")
    rows = []
    for i, (re_, rf) in enumerate(zip(exact, fast)):
        re_, rf = re_.detach().float().cpu().flatten(), rf.detach().float().cpu().flatten()
        if re_.shape != rf.shape:
            raise ValueError(f"draw {i}: exact rewards {tuple(re_.shape)} but fast rewards {tuple(rf.shape)}")
        te, be = selection_sets(re_, n_max, n_min)
        tf, bf = selection_sets(rf, n_max, n_min)
        row = {"top_match": te == tf, "bottom_match": be == bf, "exact_top": sorted(te), "fast_top": sorted(tf),
               "exact_bottom": sorted(be), "fast_bottom": sorted(bf), "reward_spread": float(re_.max() - re_.min()),
               "reward_max_abs_err": float((rf - re_).abs().max()), "rank_corr": _spearman(re_, rf),
               "regret": selection_regret(re_, te, be, tf, bf)}
        row["match"] = row["top_match"] and row["bottom_match"]
        if draws is not None:
            d = draws[i]
            row = {"seed": d.seed, "step": d.step, "t": d.t, **row}
        rows.append(row)
    return report_from_rows(rows)


def report_from_rows(rows: Sequence[dict]) -> AgreementReport:
    """The :class:`AgreementReport` of per-draw rows (``AgreementReport.per_draw``), e.g. the rows of several runs
    pooled (:func:`pool_reports`). ``by_t`` needs every row's ``t``; the rank correlation is the mean of the rows'
    finite ``rank_corr`` (NaN for fewer than 2 candidates, or a row written before rows kept it)."""
    rows = list(rows)
    if not rows:
        raise ValueError("no draws to compare")
    k = len(rows)
    corr = [r.get("rank_corr", float("nan")) for r in rows]
    finite = [c for c in corr if c == c]
    err = []
    for r in rows:
        e, spread = r["reward_max_abs_err"], r["reward_spread"]
        err.append(e / spread if spread > 0 else float("inf") if e > 0 else 0.0)
    by_t: dict[str, dict] = {}
    if all("t" in r for r in rows):
        for lo in range(0, 1000, 250):
            sel = [r for r in rows if lo <= r["t"] < lo + 250]
            if sel:
                by_t[f"{lo}<=t<{lo + 250}"] = {"n": len(sel), "agreement": sum(r["match"] for r in sel) / len(sel)}
    hits = sum(r["match"] for r in rows)
    regrets = sorted(r["regret"] for r in rows)
    return AgreementReport(
        agreement=hits / k,
        top_agreement=sum(r["top_match"] for r in rows) / k,
        bottom_agreement=sum(r["bottom_match"] for r in rows) / k,
        n_draws=k,
        rank_correlation=sum(finite) / len(finite) if finite else float("nan"),
        reward_abs_err_over_spread=float(torch.tensor(err).median()),
        per_draw=rows,
        by_t=by_t,
        agreement_ci95=wilson_interval(hits, k),
        regret_mean=statistics.fmean(regrets),
        regret_max=regrets[-1],
    )


def pool_reports(parts: Sequence[dict]) -> AgreementReport:
    """One report over the draws of several measurements of one path (each ``AgreementReport.to_json()`` with its
    ``per_draw`` rows, e.g. one benchmark run per device call with a different ``--first-seed``).

    The rank correlation of rows that lack ``rank_corr`` is taken from their part's mean, weighted by its draws.

    Raises:
        ValueError: a part without per-draw rows, or a draw (seed, step) measured twice.
    """
    rows, seen = [], {}
    for i, part in enumerate(parts):
        pd = part.get("per_draw")
        if not pd:
            raise ValueError(f"part {i} has no per-draw rows: measure it with per_draw kept (benchmark.py --per-draw)")
        for r in pd:
            key = (r.get("seed"), r.get("step"))
            if None in key:
                raise ValueError(f"part {i}: a row without its seed and step cannot be pooled")
            if key in seen:
                raise ValueError(f"draw seed={key[0]} step={key[1]} is in part {seen[key]} and part {i}: pool disjoint draws "
                                 "(a later run with benchmark.py --first-seed past the earlier run's seeds)")
            seen[key] = i
            rows.append(r if "rank_corr" in r else {**r, "rank_corr": float(part.get("rank_correlation", float("nan")))})
    return report_from_rows(rows)


def collect_rewards(selector: Selector, draws: Sequence[Draw]) -> list[Tensor]:
    """Rewards [n] (CPU, fp32) of every draw under one path."""
    return [selector(d).detach().float().cpu() for d in draws]


def selection_agreement(exact: Selector, fast: Selector, draws: Sequence[Draw], n_max: int = 2, n_min: int = 2) -> AgreementReport:
    """Run both paths on ``draws`` and compare their selections (see :func:`compare_selections`)."""
    return compare_selections(collect_rewards(exact, draws), collect_rewards(fast, draws), n_max, n_min, draws)


def engine_selector(engine, text, reward_prompts: Sequence[str], n: int, camera: Optional[Tensor] = None) -> Selector:
    """A path through a :class:`~rewardsds.candidates.CandidateEngine`: the stages a ranked training step runs on the
    draw's candidates (draw, prediction at t, then :meth:`~rewardsds.candidates.CandidateEngine.look_ahead_and_score`:
    lookahead, decode, reward, with pruning where the engine's lookahead settings ask for it).

    Args:
        engine: the configured engine (its prior, reward, lookahead, decode and prune settings are the path).
        text: conditioning of the draw's views (from the engine's own prior: dtype and all).
        reward_prompts: one prompt per view.
        n: candidates per draw.
        camera: c2w [b, 4, 4] of the draw's views, for a camera-conditioned prior (MVDream).

    Returns:
        draw -> rewards [n] (views averaged as the engine is configured).
    """

    def select(d: Draw) -> Tensor:
        latents = d.latents.to(engine.prior.device)
        engine.chunk_size(latents)  # settle an automatic chunk size once, on the engine the copies share it from
        e = copy.copy(engine)  # shares prior, reward and chunk size; only the seed that keys the noises differs
        e.seed = int(d.seed)
        cands = e.draw(latents, int(d.t), n, int(d.step))
        cands.eps_cond, cands.eps_uncond = e.predict(cands, text, camera)
        e.look_ahead_and_score(cands, text, list(reward_prompts), camera)
        r = cands.rewards
        return r if r.dim() == 1 else r.mean(1)

    return select
