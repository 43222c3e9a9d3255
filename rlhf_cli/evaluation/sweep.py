"""`rlhf sweep`: PPO (or best-of-n) once per value of one setting, from the same SFT and reward models — the
over-optimisation picture.

    rlhf sweep --recipe tiny --param ppo.kl_coef --values 0,0.01,0.05,0.2
    rlhf sweep --recipe tiny --param best_of_n.n --values 1,4,16,64,256     # best-of-n: KL log n - (n-1)/n

Each value trains PPO into `<run>/sweep/<param>=<value>/ppo/` with the run's `sft/final` as policy and reference and its
`reward/final` as reward model (set through `ppo.policy_from` / `ppo.reward_from`; the toy data are shared through a
link to `<run>/data`). Missing prerequisite stages (pretrain ... reward) are run first. Finished points are kept on a
second call (pass --overwrite to redo them), so adding values is cheap. Each point's held-out gold reward, reward-model
score and KL to the SFT model come from its `ppo/eval.json`; `<run>/sweep/sweep.png` plots gold reward and RM score
against KL — with a small KL penalty the RM score keeps rising while the gold reward stalls or falls (Goodhart's law;
Gao et al. 2022, "Scaling laws for reward model overoptimization") — and `<run>/sweep/sweep.json` holds the numbers.
A `best_of_n.*` key runs `rlhf best-of-n` per value the same way, into `<run>/sweep-best_of_n/` (its KL is the analytic
log n - (n-1)/n, its RM score that of the chosen answers).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

from rlhf_cli.evaluation.stats import gao_curve, gao_fit
from rlhf_cli.recipe import load_recipe, save_resolved
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.files import read_json, write_json_atomic
from rlhf_cli.runtime.layout import RunLayout, link_in_run, path_in_run
from rlhf_cli.runtime.lock import run_lock
from rlhf_cli.runtime.pipeline import run_pipeline
from rlhf_cli.stages.common import build_trainer_configs

PREREQUISITES = "pretrain,sft,sample,label,reward"


SWEEPABLE = ("ppo", "best_of_n")  # stages whose eval.json holds a KL to SFT and an RM score
# Keys a sweep cannot vary: the models every point shares (the sweep sets them), the prompts every point is judged
# on, and where a point writes.
NOT_SWEPT = ("policy_from", "reward_from", "data", "training.output_dir")


def check_param(param: str, values: list[str]) -> str:
    """The stage a sweep of `param` over `values` runs; a UserError for a key or values it cannot sweep."""
    stage, _, key = param.partition(".")
    if stage not in SWEEPABLE or not key:
        raise UserError(
            f"--param {param}: a sweep trains PPO (or runs best-of-n) once per value, so the key must be a ppo.* or "
            f"best_of_n.* setting (for example ppo.kl_coef, ppo.training.learning_rate or best_of_n.n)."
        )
    if any(key == k or key.startswith(k + ".") for k in NOT_SWEPT):
        raise UserError(
            f"--param {param}: every point of a sweep starts from the run's SFT and reward models and is judged on "
            f"the same prompts, so {', '.join(f'{stage}.{k}' for k in NOT_SWEPT)} cannot vary; sweep a setting such "
            "as ppo.kl_coef."
        )
    if not values:
        raise UserError("--values is empty; give comma-separated values, for example --values 0,0.01,0.05,0.2.")
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise UserError(f"--values lists {', '.join(twice)} more than once; give each value once.")
    odd = [v for v in values if "/" in v or "\\" in v or v in (".", "..")]
    if odd:
        raise UserError(f"--values {odd[0]}: each value names a point's folder, so it cannot hold / or be . or ..")
    return stage


def _point_metrics(stage: str, stage_eval: dict) -> dict:
    """KL, gold reward and RM score of the stage's policy (and the SFT reference) from its eval.json."""
    own, sft = stage_eval.get(stage, {}), stage_eval.get("sft", {})
    return {
        "kl": own.get("kl_to_reference", stage_eval.get("kl_to_sft_bound")),
        "gold_reward": own.get("gold_reward"),
        "rm_score": own.get("rm_score"),
        "length": own.get("length", own.get("mean_answer_tokens")),
        "finished_rate": own.get("finished_rate"),
        "gold_gain": stage_eval.get("gold_gain"),  # {mean, low, high, n}
        "sft_gold_reward": sft.get("gold_reward"),
        "sft_rm_score": sft.get("rm_score"),
    }


def run_sweep(
    recipe,
    run_dir: str | Path,
    param: str,
    values: list[str],
    base_overrides: list[str] | None = None,
    recipe_ref: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Train PPO (run best-of-n) once per value of `param`; write <run>/sweep/sweep.json and sweep.png; return it.

    Args:
        recipe: the resolved Recipe (for the prerequisite stages).
        run_dir: the run folder whose sft/ and reward/ models every point starts from.
        param: a `ppo.*` or `best_of_n.*` recipe key, e.g. ppo.kl_coef or best_of_n.n.
        values: the values (strings, parsed as YAML like --set).
        base_overrides: the --set overrides every point shares.
        recipe_ref: the recipe name or path each point is loaded from (default: recipe.name as a built-in).
        overwrite: redo points already finished.
    """
    with run_lock(run_dir):
        return _run_sweep(recipe, Path(run_dir), param, values, base_overrides, recipe_ref, overwrite)


def _run_sweep(recipe, run_dir: Path, param, values, base_overrides, recipe_ref, overwrite) -> dict:
    from rich.console import Console

    values = [v.strip() for v in values if v.strip()]
    stage = check_param(param, values)
    shared = [
        f"{stage}.policy_from={(run_dir / 'sft' / 'final').resolve()}",
        f"{stage}.reward_from={(run_dir / 'reward' / 'final').resolve()}",
    ]
    # Every point's recipe and trainer config is built now, before the first stage runs: a misspelt key or a value of
    # the wrong type costs a second, not the minutes of the prerequisite stages.
    recipes = {
        v: load_recipe(recipe_ref or recipe.name, [*(base_overrides or []), *shared, f"{param}={v}"]) for v in values
    }
    for rec in recipes.values():
        build_trainer_configs(rec, run_dir, [stage])
    console = Console()
    if not all(RunLayout(run_dir).finished(s) for s in ("sft", "reward")):
        console.print(f"[bold]sweep:[/] {run_dir} has no finished sft/reward models yet; running {PREREQUISITES} first")
        run_pipeline(recipe, run_dir, stages=PREREQUISITES, resume=True)

    sweep_dir = RunLayout(run_dir).sweep_dir(stage)
    run_stage = importlib.import_module(f"rlhf_cli.stages.{stage}").run
    points = []
    for value in values:
        point_dir = sweep_dir / f"{param}={value}"
        rec = recipes[value]
        with run_lock(point_dir):  # a point is a run folder of its own: not while another command writes it
            data_link = point_dir / "data"
            if not data_link.exists() and (run_dir / "data").is_dir():
                try:  # share the toy world's files instead of writing them again
                    link_in_run(data_link, run_dir / "data")
                except OSError:
                    pass
            save_resolved(rec, point_dir)
            done = RunLayout(point_dir).finished(stage)
            console.rule(f"[bold]sweep {param}={value}" + (" (finished: kept)" if done and not overwrite else ""))
            if overwrite or not done:
                run_stage(rec, point_dir, resume=not overwrite, overwrite=overwrite)
        point = {
            "value": value,
            "run_dir": path_in_run(point_dir, run_dir),  # sweep.json's paths are relative to the run
            **_point_metrics(stage, read_json(RunLayout(point_dir).eval_json(stage))),
        }
        points.append(point)
        record = {
            "param": param,
            "stage": stage,
            "values": values,
            "run_dir": path_in_run(run_dir, run_dir),
            "points": points,
            "reference": _reference(points),
        }
        write_json_atomic(sweep_dir / "sweep.json", record)  # after every point: a killed sweep keeps what it had

    record["fit"] = fit_goodhart(record)
    record["plot"] = path_in_run(plot_sweep(record, sweep_dir / "sweep.png"), run_dir)
    write_json_atomic(sweep_dir / "sweep.json", record)
    _print_table(console, record)
    return record


GAO_FORMS = {"rl": "d(α − β log d)", "bon": "d(α − βd)"}  # Gao et al. 2022's gold gain, d = √KL


def fit_goodhart(record: dict) -> dict | None:
    """Gao et al. 2022's form fitted to the points' gold-reward gain over SFT against KL (RL for PPO, best-of-n's
    own), with where the fitted gold reward peaks, and the point with the highest measured gold reward."""
    ref = record["reference"].get("gold_reward")
    pts = [p for p in record["points"] if _ok(p.get("kl")) and _ok(p.get("gold_reward"))]
    if ref is None:
        return None
    fit = gao_fit([p["kl"] for p in pts], [p["gold_reward"] - ref for p in pts],
                  "bon" if record["stage"] == "best_of_n" else "rl")  # fmt: skip
    if fit is None:
        return None
    best = max(pts, key=lambda p: p["gold_reward"])
    fit["peak_gold_reward"] = None if fit["peak_gain"] is None else ref + fit["peak_gain"]
    fit["best_point"] = {"value": best["value"], "kl": best["kl"], "gold_reward": best["gold_reward"]}
    return fit


def _reference(points: list[dict]) -> dict:
    """The SFT model's gold reward and RM score (the same in every point: the same model and prompts), at KL 0."""

    def mean(key):
        xs = [p[key] for p in points if isinstance(p.get(key), (int, float))]
        return sum(xs) / len(xs) if xs else None

    return {"kl": 0.0, "gold_reward": mean("sft_gold_reward"), "rm_score": mean("sft_rm_score")}


def plot_sweep(record: dict, path: Path) -> Path:
    """Gold reward (left axis) and reward-model score (right axis) against KL to the SFT model, one point per value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = record["reference"]
    pts = sorted((p for p in record["points"] if _ok(p.get("kl"))), key=lambda p: p["kl"])
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    ax2 = ax.twinx()
    xs = [ref["kl"], *(p["kl"] for p in pts)]
    for axis, key, colour, label in (
        (ax, "gold_reward", "tab:green", "gold reward"),
        (ax2, "rm_score", "tab:blue", "reward-model score"),
    ):
        ys = [ref[key], *(p[key] for p in pts)]
        keep = [(x, y) for x, y in zip(xs, ys, strict=True) if _ok(y)]
        if keep:
            axis.plot([k[0] for k in keep], [k[1] for k in keep], marker="o", color=colour, label=label)
            axis.set_ylabel(label, color=colour)
            axis.tick_params(axis="y", colors=colour)
    for p in pts:
        if _ok(p.get("gold_reward")):
            ax.annotate(
                f"{record['param'].split('.')[-1]}={p['value']}",
                (p["kl"], p["gold_reward"]),
                textcoords="offset points",
                xytext=(4, -12),
                fontsize=8,
            )
    if _ok(ref.get("gold_reward")):
        ax.annotate("SFT", (0, ref["gold_reward"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    fit = record.get("fit")
    if fit and pts and _ok(ref.get("gold_reward")):  # Gao et al.'s form through the points, and where it peaks
        top = max(p["kl"] for p in pts) * 1.05
        grid = [top * i / 100 for i in range(101)]
        form = GAO_FORMS[fit["form"]]
        ax.plot(grid, [ref["gold_reward"] + gao_curve(fit, k) for k in grid], color="tab:green", ls=":", lw=1.2,
                label=f"gold fitted: {form}, d = √KL")  # fmt: skip
        if fit.get("peak_kl") is not None and fit["peak_kl"] <= top:
            ax.axvline(fit["peak_kl"], color="tab:green", ls="--", lw=0.8)
            ax.annotate(f"fitted peak, KL {fit['peak_kl']:.2f}", (fit["peak_kl"], fit["peak_gold_reward"]),
                        textcoords="offset points", xytext=(4, 6), fontsize=8, color="tab:green")  # fmt: skip
    policy = {"ppo": "PPO policy", "best_of_n": "best-of-n"}.get(record.get("stage", "ppo"), "policy")
    ax.set_xlabel(f"KL({policy} || SFT model), nats per answer (held-out prompts)")
    ax.set_title(
        "Reward over-optimisation: gold reward and RM score against KL\n"
        f"({policy} per {record['param']} value, same reward model; cf. Gao et al. 2022)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.12)  # room for the labels of the points at the edges
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    # below the axes: inside, it covered the points (the largest-KL one sits in a corner)
    ax.legend(
        lines, [ln.get_label() for ln in lines], loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _print_table(console, record: dict) -> None:
    from rich.table import Table

    def f(x, fmt="{:.3f}"):
        return fmt.format(x) if _ok(x) else "-"

    table = Table(title=f"sweep over {record['param']} (held-out prompts)")
    for col in (record["param"], "KL to SFT", "gold reward", "gold gain [95 %]", "RM score", "length"):
        table.add_column(col, justify="right")
    ref = record["reference"]
    table.add_row("SFT", "0", f(ref["gold_reward"]), "", f(ref["rm_score"]), "")
    for p in record["points"]:
        g = p.get("gold_gain")
        gain = f"{g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]" if g else "-"
        table.add_row(
            str(p["value"]), f(p["kl"]), f(p["gold_reward"]), gain, f(p["rm_score"]), f(p.get("length"), "{:.1f}")
        )
    console.print(table)
    fit = record.get("fit")
    if fit:
        form = GAO_FORMS[fit["form"]]
        peak = (
            f"the fitted gold reward peaks at KL {fit['peak_kl']:.3f} ({fit['peak_gold_reward']:.3f})"
            if fit["peak_kl"] is not None
            else "the fitted gold reward is still rising at the largest KL (no peak)"
        )
        best, r2 = fit["best_point"], "" if fit["r2"] is None else f", R² {fit['r2']:.2f}"
        console.print(
            f"Gao et al. 2022's fit, gold gain = {form} with d = √KL: α {fit['alpha']:.3f}, β {fit['beta']:.3f}{r2}; "
            f"{peak}; measured best: {record['param']}={best['value']} (KL {best['kl']:.3f}, gold "
            f"{best['gold_reward']:.3f})"
        )
    console.print(f"Plot: {record['plot']}  Numbers: {Path(record['plot']).with_name('sweep.json')}")
