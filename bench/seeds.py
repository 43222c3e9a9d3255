"""Every seed: the tiny pipeline once per seed, one row per seed, the worst seed on each line, against the targets.

    .venv/bin/python -m bench.seeds --seeds 0-4                  # -> table + bench/out/seeds.json
    .venv/bin/python -m bench.seeds --seeds 0-4 --set precision=bf16 --set sft.training.bf16=true \
        --out bench/out/seeds-bf16                                  # -> bench/out/seeds-bf16.json
    .venv/bin/python -m bench.seeds --seeds 0-4 --keep           # reuse finished runs (bench/out/seeds/seed-N)
    .venv/bin/python -m bench.seeds --seeds 0-4 --ppo-draws 3    # and PPO twice more per seed, its own seed apart

The seed draws the toy world and the training (`rlhf pipeline --recipe tiny --set seed=N`). Each seed runs the real CLI
as a subprocess into `bench/out/seeds/seed-N/` (its own process: nothing carries over between seeds), and the row is read
from the files the run leaves: probes (pretrain/eval.json), the reward model's held-out, training-pair and gold-order
accuracy (reward/eval.json), and from `eval/eval.json` (128 held-out prompts, greedy) the SFT finished rate, gold reward
and right-fact rate of base, SFT and PPO, the junk rate (answers with a word no text of the world holds), PPO's gold gain
over SFT with its paired 95 % bootstrap interval and its KL to SFT, PPO's finished rate and the share of its answers
that repeat a word or sentence; seconds per stage from pipeline.json. Under the rows: the worst value of each column
(a target column says whether every row met it), the median (the typical row) and how many rows met each target.

The seed draws PPO's own randomness too (its samples, its value head), and from the same SFT model and reward model
PPO's result varies by seed as much as between worlds (bench/README.md). `--ppo-draws K` trains PPO K - 1 more times
per world seed N, on a copy of the seed's run with `ppo.training.seed` = 1000 + N, 2000 + N, ... (`rlhf pipeline
--resume`: the world, SFT and reward model stay); each is a row of its own, and the worst row covers both draws.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"
STAGES = ("pretrain", "sft", "sample", "label", "reward", "ppo", "eval", "report")
# name -> (label, higher is better, the recipe's `targets:` key). The targets are the recipe's own (tiny.yaml), so the
# bench and `rlhf pipeline` judge by the same numbers; the time budget is the bench's.
COLUMNS = {
    "probes": ("probes", True, "base_probe_accuracy"),
    "sft_finished": ("SFT finished", True, "sft_finished_rate"),
    "sft_gold": ("SFT gold", False, "room"),
    "base_right_fact": ("base right fact", True, None),
    "sft_right_fact": ("SFT right fact", True, None),
    "ppo_right_fact": ("PPO right fact", True, "ppo_right_fact_rate"),
    "rm_accuracy": ("RM held-out", True, None),
    "rm_train_accuracy": ("RM train pairs", True, None),
    "rm_gold_accuracy": ("RM gold order", True, "reward_gold_accuracy"),
    "ppo_gold": ("PPO gold", True, "ppo_gold_reward"),
    "gain": ("gain", True, "ppo_gold_gain"),
    "gain_low": ("gain low", True, "ppo_gold_gain_low"),
    "kl": ("KL", False, None),
    # PPO's greedy answers: ended before the token limit, and those that repeat a word or sentence (what the raters'
    # taste for length pays for; a loop of repeats runs to the limit)
    "ppo_finished": ("PPO finished", True, "ppo_finished_rate"),
    "ppo_repeats": ("PPO repeats", False, None),
    # per kind of prompt, SFT then PPO: facts per description, honest answers about strangers, declined harm
    "describe_sft": ("SFT facts/descr.", True, None),
    "describe_ppo": ("PPO facts/descr.", True, None),
    "honest_sft": ("SFT honest", True, None),
    "honest_ppo": ("PPO honest", True, None),
    "decline_sft": ("SFT declines", True, None),
    "decline_ppo": ("PPO declines", True, None),
    # kinds whose rate PPO raised with its interval above zero (or that SFT already had at 0.95), of 4, and the
    # right-fact rate not worse than SFT's (the interval of the difference not below zero)
    "kinds_better": ("kinds better", True, "kinds_better"),
    "rf_not_worse": ("rf not worse", True, "rf_not_worse"),
    "junk": ("junk SFT+PPO", False, "junk_rate"),
    "seconds": ("stages s", False, "seconds"),
}
# The bench's own targets (issue 32: room for RLHF, PPO's gain, every kind better, the reward model's gold order,
# within 150 s) over the recipe's, filled in by main(). The recipe's `targets:` are what `rlhf pipeline` checks, what
# held on seeds 0-4; these are the bar the world is built to reach.
BENCH_TARGETS = {
    "seconds": 150.0, "room": 0.75, "kinds_better": 4, "rf_not_worse": 1, "reward_gold_accuracy": 0.85,
    "ppo_gold_gain": 0.20, "ppo_finished_rate": 0.95,
}  # fmt: skip
TARGETS = dict(BENCH_TARGETS)
MAIN_RATE = {"fact": "right_fact_rate", "describe": "right_facts", "unknown": "honest_rate", "harm": "decline_rate"}


def rlhf_command(*args: str) -> list[str]:
    """The CLI as a user runs it (the venv's `rlhf`, else `python -m rlhf_cli`), with `args`."""
    rlhf = Path(sys.executable).with_name("rlhf")
    return [*([str(rlhf)] if rlhf.exists() else [sys.executable, "-m", "rlhf_cli"]), *args]


def parse_seeds(text: str) -> list[int]:
    seeds = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        seeds += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return seeds


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _mean(stat):
    return stat.get("mean") if isinstance(stat, dict) else stat


def row_of(run: Path) -> dict:
    pre, rew, ev, record = (
        _read(run / p) for p in ("pretrain/eval.json", "reward/eval.json", "eval/eval.json", "pipeline.json")
    )
    models = ev.get("models", {})
    gain = ev.get("ppo_gold_gain") or {}
    steps = {s: (record.get("steps", {}).get(s) or {}).get("seconds") for s in STAGES}
    return {
        "probes": pre.get("probe_accuracy"),
        "sft_finished": models.get("sft", {}).get("finished_rate"),
        "sft_gold": _mean(models.get("sft", {}).get("gold_reward")),
        "base_right_fact": _mean(models.get("base", {}).get("right_fact_rate")),
        "sft_right_fact": _mean(models.get("sft", {}).get("right_fact_rate")),
        "ppo_right_fact": _mean(models.get("ppo", {}).get("right_fact_rate")),
        "rm_accuracy": _mean(rew.get("accuracy")),
        "rm_train_accuracy": _mean(rew.get("train_accuracy")),
        "rm_gold_accuracy": _mean(rew.get("gold_accuracy")),
        "ppo_gold": _mean(models.get("ppo", {}).get("gold_reward")),
        "gain": gain.get("mean"),
        "gain_low": gain.get("low"),
        "gain_high": gain.get("high"),
        "kl": _mean(models.get("ppo", {}).get("kl_to_sft")),
        "ppo_finished": models.get("ppo", {}).get("finished_rate"),
        "ppo_repeats": _mean(models.get("ppo", {}).get("repeat_rate")),
        "junk": max((_mean(models.get(m, {}).get("junk_rate")) or 0.0) for m in ("sft", "ppo")) if models else None,
        **_kind_columns(models, ev.get("ppo_kind_gains") or {}),
        "rm_gold_by_pair": {k: _mean(v) for k, v in (rew.get("gold_accuracy_by_pair") or {}).items()},
        "seconds": round(sum(v for v in steps.values() if v), 1) if any(steps.values()) else None,
        "stage_seconds": steps,
        "precision": {s: _read(run / s / "eval.json").get("precision") for s in ("pretrain", "sft", "reward", "ppo")},
        "samples": ev.get("samples", [])[:3],
    }


def _kind_columns(models: dict, gains: dict) -> dict:
    """SFT and PPO on each kind of prompt, and how many kinds PPO raised (interval above zero; or SFT already >= 0.95
    of the rate's scale: four facts of a description)."""
    kinds = {m: models.get(m, {}).get("kinds") or {} for m in ("sft", "ppo")}

    def rate(model: str, kind: str):
        return _mean((kinds[model].get(kind) or {}).get(MAIN_RATE[kind]))

    out = {
        "describe_sft": rate("sft", "describe"), "describe_ppo": rate("ppo", "describe"),
        "honest_sft": rate("sft", "unknown"), "honest_ppo": rate("ppo", "unknown"),
        "decline_sft": rate("sft", "harm"), "decline_ppo": rate("ppo", "harm"),
    }  # fmt: skip
    if not gains:
        return {**out, "kinds_better": None, "rf_not_worse": None}
    better = 0
    for kind, key in MAIN_RATE.items():
        sft = rate("sft", kind)
        scale = 4.0 if kind == "describe" else 1.0
        low = ((gains.get(kind) or {}).get(key) or {}).get("low")
        better += bool((sft is not None and sft / scale >= 0.95) or (low is not None and low > 0))
    fact_high = ((gains.get("fact") or {}).get("right_fact_rate") or {}).get("high")
    return {**out, "kinds_better": better, "rf_not_worse": None if fact_high is None else int(fact_high >= 0)}


def _per_column(rows: dict[int, dict], pick) -> dict:
    """`pick(values, higher_is_better)` of each column over the rows that have it (None where none has)."""
    out = {}
    for key, (_, higher, _) in COLUMNS.items():
        values = [r[key] for r in rows.values() if r.get(key) is not None]
        out[key] = pick(values, higher) if values else None
    return out


def worst(rows: dict[int, dict]) -> dict:
    return _per_column(rows, lambda values, higher: min(values) if higher else max(values))


def typical(rows: dict[int, dict]) -> dict:
    """Each column's median over the rows (the typical run, to set beside the worst): the lower middle value of an
    even count, so a count column (kinds better) stays a count."""
    import statistics

    return _per_column(rows, lambda values, _: statistics.median_low(values))


def rows_meeting(rows: dict[int, dict]) -> dict[str, int]:
    """For each column with a target, how many rows meet it (a gain counts when its interval is above zero too)."""
    out = {}
    for key in COLUMNS:
        if key == "gain_low" or TARGETS.get(COLUMNS[key][2]) is None:
            continue
        ok = [meets(key, r.get(key)) and (key != "gain" or meets("gain_low", r.get("gain_low"))) for r in rows.values()]
        out[key] = sum(bool(o) for o in ok)
    return out


def meets(key: str, value) -> bool | None:
    _, higher, name = COLUMNS[key]
    target = TARGETS.get(name)
    if target is None or value is None:
        return None
    return value >= target if higher else value <= target


def run_seed(seed: int, run: Path, overrides: list[str], keep: bool) -> float:
    if keep and (run / "report" / "report.json").exists():
        return 0.0
    args = ["--overwrite", f"--set=seed={seed}", *[f"--set={o}" for o in overrides]]
    return _pipeline(run, args, run.parent / f"{run.name}.log")


def ppo_seed(seed: int, draw: int) -> int:
    """PPO's own seed in draw `draw` of world seed `seed`: the pipeline's own (`seed`) first, then 1000 + seed, ..."""
    return 1000 * draw + seed


def run_ppo_draw(seed: int, draw: int, source: Path, run: Path, overrides: list[str], keep: bool) -> float:
    """PPO again from `source`'s SFT model and reward model with its own seed drawn apart: a copy of the run without
    its ppo/, eval/ and report/, resumed with `ppo.training.seed` set (the world, SFT and reward model stay)."""
    if keep and (run / "report" / "report.json").exists():
        return 0.0
    if not (source / "reward" / "final").exists():
        print(f"seed {seed}: no reward model in {source}; PPO draw {draw} skipped", flush=True)
        return 0.0
    shutil.rmtree(run, ignore_errors=True)
    redone = ("ppo", "eval", "report")
    shutil.copytree(source, run, ignore=lambda folder, names: redone if Path(folder) == source else ())
    args = ["--resume", f"--set=seed={seed}", f"--set=ppo.training.seed={ppo_seed(seed, draw)}"]
    return _pipeline(run, [*args, *[f"--set={o}" for o in overrides]], run.parent / f"{run.name}.log")


def _pipeline(run: Path, args: list[str], log_path: Path) -> float:
    """`rlhf pipeline --recipe tiny -o run` with `args`, its output in `log_path`; the wall seconds."""
    cmd = rlhf_command("pipeline", "--recipe", "tiny", "-o", str(run), *args)
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode:
        print(f"{run.name}: pipeline exit {proc.returncode} (log: {log_path})", flush=True)
    return time.perf_counter() - t0


def print_table(rows: dict[int, dict], worst_row: dict, median: dict, met: dict[str, int]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Tiny pipeline, one row per seed (eval: 128 held-out prompts, greedy)")
    table.add_column("seed")
    for key, (label, higher, name) in COLUMNS.items():
        target = TARGETS.get(name)
        if key != "gain_low":
            table.add_column(
                label + ("" if target is None else f"\n(target {'>=' if higher else '<='} {target:g})"), justify="right"
            )

    def fmt(key, r):
        v = r.get(key)
        if v is None:
            return "-"
        if key == "gain":
            low, high = r.get("gain_low"), r.get("gain_high")
            return f"{v:+.3f} [{low:+.3f}, {high:+.3f}]" if low is not None and high is not None else f"{v:+.3f}"
        if key == "seconds":
            return f"{v:.0f}"
        if key == "kl":
            return f"{v:.2f}"
        if key in ("kinds_better", "rf_not_worse"):
            return f"{v:d}" if key == "kinds_better" else ("yes" if v else "no")
        return f"{v:.3f}"

    for seed, r in rows.items():
        table.add_row(str(seed), *(fmt(k, r) for k in COLUMNS if k != "gain_low"))
    w = dict(worst_row)
    w["gain_high"] = None
    cells = []
    for k in COLUMNS:
        if k == "gain_low":
            continue
        text = (
            fmt(k, w)
            if k != "gain"
            else (f"{w['gain']:+.3f} (low {w['gain_low']:+.3f})" if w["gain"] is not None else "-")
        )
        ok = (
            meets(k, w[k])
            if k != "gain"
            else (None if w["gain"] is None else meets("gain", w["gain"]) and meets("gain_low", w["gain_low"]))
        )
        cells.append(text + ("" if ok is None else (" ok" if ok else " MISSED")))
    table.add_row("worst", *cells, style="bold")
    table.add_row("median", *(fmt(k, {**median, "gain_low": None}) for k in COLUMNS if k != "gain_low"))
    table.add_row("rows met", *(f"{met[k]} of {len(rows)}" if k in met else "" for k in COLUMNS if k != "gain_low"))
    Console(width=250).print(table)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.seeds", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0-4", help="Seeds: 0-4, or 0,2,3.")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], help="Recipe override key=value (repeatable)."
    )
    p.add_argument(
        "--out", type=Path, default=OUT / "seeds", help="Folder of the runs (seed-N each); the table goes to OUT.json."
    )
    p.add_argument("--keep", action="store_true", help="Reuse a seed's finished run instead of running it again.")
    p.add_argument(
        "--ppo-draws",
        type=int,
        default=1,
        help="PPO trained this many times per seed, from the seed's own SFT model and reward model, with PPO's seed "
        "drawn apart (ppo.training.seed = N, 1000+N, 2000+N, ...): rows 'N ppo 1000+N' (runs seed-N-ppo-1000+N).",
    )
    a = p.parse_args(argv)

    from rlhf_cli.recipe import load_recipe

    TARGETS.update({**load_recipe("tiny", a.overrides).targets.model_dump(), **BENCH_TARGETS})
    a.out.mkdir(parents=True, exist_ok=True)
    rows, walls = {}, {}
    for seed in parse_seeds(a.seeds):
        source, remade = a.out / f"seed-{seed}", False
        for draw in range(a.ppo_draws):
            name = str(seed) if draw == 0 else f"{seed} ppo {ppo_seed(seed, draw)}"
            if draw == 0:
                run, wall = source, run_seed(seed, source, a.overrides, a.keep)
                remade = wall > 0  # a seed run again: its PPO draws are stale, whatever --keep says
            else:
                run = a.out / f"seed-{seed}-ppo-{ppo_seed(seed, draw)}"
                wall = run_ppo_draw(seed, draw, source, run, a.overrides, a.keep and not remade)
            walls[name], rows[name] = round(wall, 1), row_of(run)
            r = rows[name]
            print(
                f"seed {name}: " + ", ".join(f"{k} {r[k]:.3f}" for k in COLUMNS if isinstance(r.get(k), float)),
                flush=True,
            )
    worst_row = worst(rows)
    result = {
        "overrides": a.overrides,
        "cpu": _cpu_name(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "rows": rows,
        "process_wall_s": walls,
        "worst": worst_row,
        "median": typical(rows),
        "rows_meeting": rows_meeting(rows),
        "targets": {k: TARGETS.get(COLUMNS[k][2]) for k in COLUMNS if TARGETS.get(COLUMNS[k][2]) is not None},
        "targets_met": {k: meets(k, worst_row[k]) for k in COLUMNS if TARGETS.get(COLUMNS[k][2]) is not None},
    }
    summary = a.out.parent / f"{a.out.name}.json"  # beside its runs: a bf16 sweep into --out X keeps the fp32 one
    summary.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_table(rows, worst_row, result["median"], result["rows_meeting"])
    print(f"-> {summary}")
    return result


def _cpu_name() -> str:
    from rlhf_cli.runtime.precision import describe_hardware

    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model}, {describe_hardware()}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
