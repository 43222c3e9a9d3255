"""Methods side by side, per seed: `rlhf compare --recipe tiny --set seed=N` once per seed, one table per seed and the
worst seed per method.

    .venv/bin/python -m bench.compare --seeds 0-2           # -> tables + bench/out/compare.json
    .venv/bin/python -m bench.compare --seeds 0 --keep      # reuse a seed's finished comparison
    .venv/bin/python -m bench.compare --seeds 0-4 --out bench/out/seeds --resume   # on bench.seeds' runs

Each seed runs the real CLI as a subprocess into `bench/out/compare/seed-N/` (the toy world, pretrain ... reward, then
PPO, DPO, best-of-n, expert iteration, RLOO and GRPO from the same SFT and reward model, on PPO's budget of generated
answers, and `rlhf eval` on 128 held-out prompts). The rows are read from `compare/compare.json`; the wall time of the
whole command is measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from bench.seeds import parse_seeds, rlhf_command
from rlhf_cli.evaluation.stats import interval_text

OUT = Path(__file__).parent / "out"
KEYS = ("gold_reward", "rm_score", "right_fact_rate", "kl_to_sft", "win_rate_gold", "win_rate_rm")


def run_seed(seed: int, run: Path, overrides: list[str], keep: bool, resume: bool = False) -> float | None:
    if keep and (run / "compare" / "compare.json").exists():
        return None
    cmd = rlhf_command("compare", "--recipe", "tiny", "--resume" if resume else "--overwrite", "-o", str(run),
                       f"--set=seed={seed}", *[f"--set={o}" for o in overrides])  # fmt: skip
    print("$ " + " ".join(cmd), flush=True)
    t0, log_path = time.perf_counter(), run.parent / f"seed-{seed}-compare.log"
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode:
        print(f"seed {seed}: compare exit {proc.returncode} (log: {log_path})", flush=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    from rich.console import Console
    from rich.table import Table

    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0-2", help="Seeds: 0-2, or 0,3.")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="Recipe override (repeatable).")
    p.add_argument("--out", type=Path, default=OUT / "compare", help="Folder of the runs (seed-N each).")
    p.add_argument("--keep", action="store_true", help="Reuse a seed's finished comparison.")
    p.add_argument("--resume", action="store_true",
                   help="Keep each run's finished stages (e.g. --out bench/out/seeds after bench.seeds: PPO is kept, the "
                        "other methods run); the wall time then counts only what ran.")  # fmt: skip
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    console, seeds = Console(width=200), {}
    for seed in parse_seeds(a.seeds):
        run = a.out / f"seed-{seed}"
        wall = run_seed(seed, run, a.overrides, a.keep, a.resume)
        path = run / "compare" / "compare.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        result["wall_s"] = None if wall is None else round(wall, 1)
        seeds[seed] = result
        table = Table(title=f"seed {seed}: {result['num_prompts']} held-out prompts, 95 % intervals"
                      + ("" if wall is None else f"; rlhf compare took {wall:.0f} s"))  # fmt: skip
        for col in (
            "method",
            "gold",
            "RM score",
            "right facts",
            "KL to SFT",
            "win (gold)",
            "win (RM)",
            "episodes",
            "s",
        ):
            table.add_column(col, justify="left" if col == "method" else "right")
        for name, r in result["methods"].items():
            table.add_row(name, *(interval_text(r[k], 2 if k.startswith(("kl", "win")) else 3) for k in KEYS),
                          str(r["episodes"]), "-" if r["seconds"] is None else f"{r['seconds']:.0f}")  # fmt: skip
        console.print(table)
    methods = list(dict.fromkeys(m for r in seeds.values() for m in r["methods"]))
    worst = {}
    for m in methods:
        golds = [r["methods"][m]["gold_reward"]["mean"] for r in seeds.values() if m in r["methods"]]
        rights = [r["methods"][m]["right_fact_rate"]["mean"] for r in seeds.values() if m in r["methods"]]
        worst[m] = {"gold_reward": min(golds), "right_fact_rate": min(rights), "seeds": len(golds)}
    if worst:
        table = Table(title="worst seed per method")
        for col in ("method", "gold (worst)", "right facts (worst)", "seeds"):
            table.add_column(col)
        for m, w in worst.items():
            table.add_row(m, f"{w['gold_reward']:.3f}", f"{w['right_fact_rate']:.3f}", str(w["seeds"]))
        console.print(table)
    out = {"seeds": seeds, "worst": worst, "overrides": a.overrides, "date": time.strftime("%Y-%m-%d")}
    (OUT / "compare.json").write_text(json.dumps(out, indent=2))
    console.print(f"Saved {OUT / 'compare.json'}")
    return out


if __name__ == "__main__":
    main()
