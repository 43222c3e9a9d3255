"""Time to chatbot: wall time of each stage of `rlhf pipeline --recipe tiny` on this machine (target: total <= 3 min).

    .venv/bin/python -m bench.pipeline                       # -> bench/out/pipeline-run, table + bench/out/pipeline.json
    .venv/bin/python -m bench.pipeline --threads 2           # pin torch to 2 threads (the 2-core target)

Runs the real CLI (`rlhf pipeline --recipe tiny --overwrite -o bench/out/pipeline-run`) as a subprocess and reads the
per-step wall times the pipeline records in `<run>/pipeline.json`; the process's own wall time (imports and start-up
included) is the total. The finished run folder is kept: `python -m bench.ppo` reuses its SFT and reward models.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"
TARGET_S = 180.0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="tiny")
    p.add_argument("--run", type=Path, default=OUT / "pipeline-run", help="run folder (replaced)")
    p.add_argument("--threads", type=int, help="OMP/torch threads (default: torch's choice)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override key=value")
    a = p.parse_args(argv)

    env = dict(os.environ)
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    rlhf = Path(sys.executable).with_name("rlhf")
    cmd = [
        str(rlhf) if rlhf.exists() else sys.executable,
        *([] if rlhf.exists() else ["-m", "rlhf_cli"]),
        "pipeline",
        "--recipe",
        a.recipe,
        "--overwrite",
        "-o",
        str(a.run),
        *[f"--set={o}" for o in a.overrides],
    ]
    print("$ " + " ".join(cmd), flush=True)
    t0, c0 = time.perf_counter(), children_cpu_s()
    proc = subprocess.run(cmd, env=env)
    wall, cpu = time.perf_counter() - t0, children_cpu_s() - c0
    record_path = a.run / "pipeline.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {"steps": {}}
    steps = {name: entry.get("seconds") for name, entry in record.get("steps", {}).items()}
    result = {
        "recipe": a.recipe,
        "run_dir": str(a.run),
        "returncode": proc.returncode,
        "cpu_count": os.cpu_count(),
        "threads": a.threads,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "steps_s": steps,
        "stages_total_s": round(sum(s or 0 for s in steps.values()), 2),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "target_s": TARGET_S,
        "command": " ".join(cmd),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pipeline.json").write_text(json.dumps(result, indent=2))
    print_table(result)
    if proc.returncode:
        print(f"pipeline failed (exit {proc.returncode}); the table holds the steps that finished.")
    return result


def children_cpu_s() -> float:
    """CPU seconds (user + system) of finished child processes: on a crowded machine, the work the pipeline did."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def print_table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"Time to chatbot: rlhf pipeline --recipe {r['recipe']} ({r['cpu_count']} cores, "
        f"load {r['load_avg_1m']} at the end)"
    )
    table.add_column("stage")
    table.add_column("wall s", justify="right")
    table.add_column("share", justify="right")
    total = r["stages_total_s"] or 1.0
    for name, seconds in r["steps_s"].items():
        table.add_row(name, f"{seconds:.1f}" if seconds is not None else "-", f"{(seconds or 0) / total:.0%}")
    table.add_row("stages total", f"{r['stages_total_s']:.1f}", "")
    table.add_row("process wall (with start-up)", f"{r['wall_s']:.1f}", "")
    table.add_row("process CPU time (user + system)", f"{r.get('cpu_s', float('nan')):.1f}", "")
    Console(width=150).print(table)
    verdict = "met" if r["wall_s"] <= r["target_s"] else "NOT met"
    print(f"target total <= {r['target_s']:.0f} s: {verdict} ({r['wall_s']:.1f} s)")


if __name__ == "__main__":
    main()
