"""Goodhart's law on every seed: `rlhf sweep --param ppo.kl_coef` over the issue's grid on each seed's tiny run, one row
per seed, against the targets.

    .venv/bin/python -m bench.goodhart --seeds 0-4 --runs bench/out/seeds     # after `python -m bench.seeds --seeds 0-4`
    .venv/bin/python -m bench.goodhart --seeds 0-4 --ppo-draws 3   # after `python -m bench.seeds ... --ppo-draws 3`

Each seed's sweep trains PPO once per kl_coef from that run's SFT and reward models (`<run>/sweep/`; finished points are
kept, so a second call only tabulates) and reads gold reward, reward-model score and KL from each point's held-out
evaluation (64 prompts, greedy). A seed meets the targets when (issue 32) the reward-model score keeps rising as the KL
grows, the gold reward peaks at an interior kl_coef of the grid and at kl_coef 0 falls at least
0.10 below that peak, and the recipe's kl_coef is within one grid step of the peak. The table goes to OUT.json.

One PPO run per point is one draw of PPO's own seed, and from the same SFT and reward model two draws at one kl_coef
can differ by more than neighbouring points do (bench/README.md). `--ppo-draws K` sweeps each of the K runs of a seed
that `bench.seeds --ppo-draws K` made (seed-N, seed-N-ppo-1000+N, ...; `ppo.training.seed` set to match) and judges
the seed on the mean over its draws at each kl_coef; each draw's gold is kept in the row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.seeds import parse_seeds, ppo_seed, rlhf_command
from rlhf_cli.recipe import load_recipe

GRID = "0,0.003,0.01,0.03,0.1,0.3"
DROP = 0.10  # gold at kl_coef 0 at least this far below its peak


def judge(points: list[dict], recipe_kl: float) -> dict:
    """The row of one seed from its sweep points (any order): gold and RM per kl_coef and the targets."""
    points = sorted(points, key=lambda p: float(p["value"]))
    values = [float(p["value"]) for p in points]
    gold = [p["gold_reward"] for p in points]
    rm = [p["rm_score"] for p in points]
    peak = max(range(len(points)), key=lambda i: gold[i])
    # the RM score should rise as the KL grows (points in the order of their measured KL; a dip of 0.05 forgiven)
    by_kl = [p["rm_score"] for p in sorted(points, key=lambda p: p["kl"])]
    rm_rising = all(b >= a - 0.05 for a, b in zip(by_kl, by_kl[1:], strict=False))
    recipe_at = min(range(len(values)), key=lambda i: abs(values[i] - recipe_kl))
    return {
        "values": values,
        "gold": gold,
        "rm": rm,
        "kl": [p["kl"] for p in points],
        "peak": values[peak],
        "interior": 0 < peak < len(points) - 1,
        "drop_at_0": gold[peak] - gold[0],
        "rm_rising": rm_rising,
        "recipe_near_peak": abs(recipe_at - peak) <= 1,
    }


def sweep_points(runs: Path, name: str, recipe: str, values: str, seed: int, draw: int) -> list[dict]:
    """`rlhf sweep` on one run (PPO's seed set for a draw past the first); its points on the grid `values`, [] if it
    failed."""
    run = runs / name
    drawn = [f"--set=ppo.training.seed={ppo_seed(seed, draw)}"] if draw else []
    cmd = rlhf_command("sweep", "--recipe", recipe, "-o", str(run), f"--set=seed={seed}", *drawn, "--param",
                       "ppo.kl_coef", "--values", values)  # fmt: skip
    print("$", " ".join(cmd), flush=True)
    with open(runs / f"{name}-sweep.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        print(f"{name}: sweep exit {rc} (log: {runs}/{name}-sweep.log)")
        return []
    record = json.loads((run / "sweep" / "sweep.json").read_text())
    wanted = {float(v) for v in values.split(",")}
    return [q for q in record["points"] if float(q["value"]) in wanted]


def mean_points(draws: list[list[dict]]) -> list[dict]:
    """One point per kl_coef: gold, RM score and KL averaged over the draws that have it."""
    by_value: dict[float, list[dict]] = {}
    for points in draws:
        for q in points:
            by_value.setdefault(float(q["value"]), []).append(q)
    return [
        {"value": str(v), **{k: sum(q[k] for q in qs) / len(qs) for k in ("gold_reward", "rm_score", "kl")}}
        for v, qs in sorted(by_value.items())
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0-4", help="Seeds: 0-4, or 0,2,3.")
    p.add_argument(
        "--runs", default="bench/out/seeds", help="Folder of the seeds' runs (seed-N each), from bench.seeds."
    )
    p.add_argument("--values", default=GRID, help=f"kl_coef grid (default {GRID}).")
    p.add_argument("--recipe", default="tiny")
    p.add_argument(
        "--ppo-draws",
        type=int,
        default=1,
        help="Sweep the K runs per seed of `bench.seeds --ppo-draws K` and judge each seed on their mean per kl_coef.",
    )
    a = p.parse_args(argv)
    runs, recipe_kl = Path(a.runs), float(load_recipe(a.recipe).ppo.kl_coef)
    rows = {}
    for seed in parse_seeds(a.seeds):
        draws = []
        for draw in range(a.ppo_draws):
            name = f"seed-{seed}" if draw == 0 else f"seed-{seed}-ppo-{ppo_seed(seed, draw)}"
            if not (runs / name).is_dir():
                print(f"{name}: no such run in {runs} (make it with python -m bench.seeds --ppo-draws {a.ppo_draws})")
                continue
            if points := sweep_points(runs, name, a.recipe, a.values, seed, draw):
                draws.append(points)
        if not draws:
            continue
        rows[seed] = row = judge(mean_points(draws), recipe_kl)
        if len(draws) > 1:
            row["gold_by_draw"] = [
                [p["gold_reward"] for p in sorted(d, key=lambda p: float(p["value"]))] for d in draws
            ]
        cells = zip(row["values"], row["gold"], row["rm"], row["kl"], strict=True)
        print(f"seed {seed}" + (f" (mean of {len(draws)} PPO draws)" if len(draws) > 1 else "") + ": "
              + "  ".join(f"{v:g}: gold {g:.3f} rm {r:+.2f} kl {k:.2f}" for v, g, r, k in cells)
              + f"  | peak {row['peak']:g} interior {row['interior']} drop {row['drop_at_0']:.3f} "
              f"rm rising {row['rm_rising']} recipe near peak {row['recipe_near_peak']}", flush=True)  # fmt: skip
    ok = {
        "interior peak": all(r["interior"] for r in rows.values()),
        f"drop at 0 >= {DROP}": all(r["drop_at_0"] >= DROP for r in rows.values()),
        "rm rising": all(r["rm_rising"] for r in rows.values()),
        "recipe within a step": all(r["recipe_near_peak"] for r in rows.values()),
    }
    worst = min((r["drop_at_0"] for r in rows.values()), default=float("nan"))
    print(f"recipe kl_coef {recipe_kl:g}; worst drop at 0: {worst:.3f}; "
          + "; ".join(f"{k}: {'ok' if v else 'MISSED'}" for k, v in ok.items()))  # fmt: skip
    out = runs.parent / f"{runs.name}-goodhart.json"
    out.write_text(json.dumps({"grid": a.values, "recipe_kl_coef": recipe_kl, "seeds": rows, "targets": ok}, indent=1))
    print(f"-> {out}")
    return 0 if rows and all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
