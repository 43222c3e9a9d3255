"""Intervals and comparisons every figure of a run is reported with: Wilson intervals of proportions, bootstrap
intervals of means and paired differences, win rates (raw and length-controlled), correlation. One interval shape,
{"mean", "low", "high", "n"}, which the report and the sweep read."""

from __future__ import annotations

import math


def interval_text(stat, digits: int = 3, missing: str = "-") -> str:
    """`mean [low, high]` of an interval ({mean, low, high}), or `missing` when there is none."""
    if not isinstance(stat, dict) or not isinstance(stat.get("mean"), (int, float)) or not math.isfinite(stat["mean"]):
        return missing
    return f"{stat['mean']:.{digits}f} [{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"


def proportion(k: int, n: int) -> dict:
    """k of n as {"mean", "low", "high", "n"}: the share with its 95 % Wilson interval (mean 0 for n = 0)."""
    low, high = wilson(k, n)
    return {"mean": k / n if n else 0.0, "low": low, "high": high, "n": n}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p, denom = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / denom, z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))  # rounding must not leave p outside


def bootstrap_ci(values, *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of `values` with a percentile-bootstrap interval: {"mean", "low", "high", "n"}."""
    import numpy as np

    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    mean = float(x.mean())  # resampled means of equal values can round a hair past it: keep low <= mean <= high
    return {"mean": mean, "low": min(float(low), mean), "high": max(float(high), mean), "n": int(x.size)}


def paired_difference_ci(a, b, **kwargs) -> dict[str, float]:
    """Mean of a[i] - b[i] (the same prompts) with a bootstrap interval over prompts."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length ({len(a)} vs {len(b)})")
    return bootstrap_ci([x - y for x, y in zip(a, b, strict=True)], **kwargs)


def outcomes(a, b, tol: float = 1e-9) -> list[float]:
    """Per pair: 1 when a beats b, 0 when b beats a, 0.5 for a tie (|a - b| <= tol)."""
    return [0.5 if abs(x - y) <= tol else float(x > y) for x, y in zip(a, b, strict=True)]


def win_rate(a, b, *, tol: float = 1e-9, **kwargs) -> dict[str, float]:
    """Share of pairs a wins, ties counting half, with a bootstrap interval; also the win/tie/loss counts."""
    out = outcomes(a, b, tol)
    result = bootstrap_ci(out, **kwargs)
    result.update(wins=sum(o == 1 for o in out), ties=sum(o == 0.5 for o in out), losses=sum(o == 0 for o in out))
    return result


def _fit_logistic(x, y, ridge: float = 1e-3, iters: int = 50):
    """Intercept and slope of P(win) = sigmoid(t0 + t1*x) for soft labels y in [0, 1] (Newton / IRLS, tiny ridge)."""
    import numpy as np

    X = np.stack([np.ones_like(x), x], axis=1)
    theta = np.zeros(2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(X @ theta)))
        grad = X.T @ (p - y) + ridge * theta
        hess = (X * (p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return theta


def length_controlled_win_rate(a, b, len_a, len_b, *, tol: float = 1e-9, n_resamples: int = 500, seed: int = 0) -> dict:
    """The win rate of a over b at equal length: a logistic regression of the outcome on the length difference.

    Each pair's outcome y (1 win, 0.5 tie, 0 loss — a soft label) is regressed on x = (len_a - len_b) / sd(len_a - len_b)
    as P(a wins) = sigmoid(t0 + t1*x), fitted by maximum likelihood; the length-controlled win rate is the prediction at
    zero length difference, sigmoid(t0). This is the idea of AlpacaEval 2's length-controlled win rate (Dubois et al.
    2024) reduced to the one covariate we have: a judge that only rewards length gives ~0.5, a genuine gain survives.
    The interval re-fits the regression on bootstrap resamples of the pairs. Caveats: where the two models' lengths never
    overlap the value extrapolates (flagged "extrapolated"); where every pair differs by the same length, length and
    model cannot be told apart (mean None); and a quality that really costs words (a courteous closing) is partly
    removed too.
    """
    import numpy as np

    y = np.asarray(outcomes(a, b, tol), dtype=float)
    diff = np.asarray(len_a, dtype=float) - np.asarray(len_b, dtype=float)
    if y.size == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0, "length_coef": math.nan}
    if diff.std() == 0 and diff.mean() != 0:  # every pair differs by the same length: length and model are confounded
        note = "not identifiable: every pair differs in length by the same amount"
        return {
            "mean": None,
            "low": None,
            "high": None,
            "n": int(y.size),
            "length_coef": None,
            "mean_length_diff": float(diff.mean()),
            "note": note,
        }
    scale = diff.std() or 1.0
    x = diff / scale

    def fit(idx):
        return _fit_logistic(x[idx], y[idx])

    t0, t1 = fit(np.arange(y.size))
    rng = np.random.default_rng(seed)
    boots = [fit(rng.integers(0, y.size, y.size))[0] for _ in range(n_resamples)]
    low, high = (1 / (1 + np.exp(-np.percentile(boots, [2.5, 97.5])))).tolist()
    return {
        "mean": float(1 / (1 + np.exp(-t0))),
        "low": low,
        "high": high,
        "n": int(y.size),
        "length_coef": float(t1),
        "mean_length_diff": float(diff.mean()),
        "extrapolated": bool(not diff.min() <= 0 <= diff.max()),  # no pair of equal length: sigmoid(t0) extrapolates
    }


# ------------------------------------------------------------------------------------------------------ scoring


def tertiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return ordered[len(ordered) // 3], ordered[2 * len(ordered) // 3]


def bucket_name(value: float, cuts: tuple[float, float]) -> str:
    return (
        f"1 low (< {cuts[0]:.3g})"
        if value < cuts[0]
        else f"2 mid (< {cuts[1]:.3g})"
        if value < cuts[1]
        else f"3 high (>= {cuts[1]:.3g})"
    )


def pearson(xs: list[float], ys: list[float]) -> float:
    import statistics

    if len(xs) < 3 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return 0.0
    return statistics.correlation(xs, ys)


# ------------------------------------------------------------------------------------------------------ agreement


def pair_agreement(a: dict, b: dict) -> tuple[int, int]:
    """(concordant, discordant): over the pairs of items two judges both scored (item -> score, higher is better),
    how many they order the same way and how many the other way; a pair either judge ties counts as neither."""
    shared = [item for item in a if item in b]
    concordant = discordant = 0
    for i, x in enumerate(shared):
        for y in shared[i + 1 :]:
            sign = (a[x] > a[y]) - (a[x] < a[y]), (b[x] > b[y]) - (b[x] < b[y])
            if 0 in sign:
                continue
            concordant += sign[0] == sign[1]
            discordant += sign[0] != sign[1]
    return concordant, discordant


def kendall_tau(concordant: int, discordant: int) -> float | None:
    """Kendall's tau over untied pairs, (C - D) / (C + D): 1 the same order, -1 reversed, 0 no relation (None: no
    pair). For two full rankings without ties this is tau-a, and 2 x agreement - 1."""
    n = concordant + discordant
    return (concordant - discordant) / n if n else None


def ranking_scores(best_first: list) -> dict:
    """A ranking (best first) as item -> score, higher better, for `pair_agreement`."""
    return {item: -position for position, item in enumerate(best_first)}


def gao_fit(kls: list[float], gains: list[float], form: str = "rl") -> dict | None:
    """Gao et al. 2022's over-optimisation curve fitted to (KL, gold-reward gain over the starting policy) points, by
    least squares: with d = sqrt(KL), RL gives gain = d (alpha - beta log d), best-of-n gain = d (alpha - beta d).
    Returns {"form", "alpha", "beta", "peak_kl", "peak_gain", "r2"} (peak_kl None when the curve has no interior
    maximum: beta <= 0, the gain still rising), or None with fewer than two points at KL > 0."""
    import numpy as np

    pts = [(math.sqrt(k), g) for k, g in zip(kls, gains, strict=True) if k is not None and g is not None and k > 1e-9]
    if len(pts) < 2:
        return None
    d = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    shape = np.log(d) if form == "rl" else d
    features = np.stack([d, -d * shape], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(features, y, rcond=None)
    predicted = features @ np.array([alpha, beta])
    spread = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float(((y - predicted) ** 2).sum()) / spread if spread > 0 else None
    if beta <= 1e-9 * max(1.0, abs(alpha)):  # flat or rising: no maximum (a rounding-size beta is no curve)
        peak_d = None
    else:
        peak_d = math.exp(alpha / beta - 1) if form == "rl" else alpha / (2 * beta)
    fit = {"form": form, "alpha": float(alpha), "beta": float(beta), "peak_kl": None if peak_d is None else peak_d**2}
    return {**fit, "peak_gain": None if peak_d is None else gao_curve(fit, fit["peak_kl"]), "r2": r2}


def gao_curve(fit: dict, kl: float) -> float:
    """The fitted gain at `kl` (gao_fit's curve)."""
    d = math.sqrt(max(kl, 0.0))
    if d == 0:
        return 0.0
    shape = math.log(d) if fit["form"] == "rl" else d
    return d * (fit["alpha"] - fit["beta"] * shape)
