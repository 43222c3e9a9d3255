"""Pre-training on any text in a time budget: `rlhf pretrain --recipe text` (every setting `auto`: chosen from the
text and the budget, rlhf_cli.models.sizing) against nanoGPT's CPU character recipe (bench/nanogpt_char.py), side by
side, on texts of three shapes, the first 90 % to train, the last 10 % held out and scored as written.

    .venv/bin/python -m bench.pretrain_text                                   # the table + bench/out/pretrain_text.json
    .venv/bin/python -m bench.pretrain_text --runs play:60 --seeds 0          # one text, one seed
    .venv/bin/python -m bench.pretrain_text --runs novel:60 --set model.size=tiny   # an ablation: one choice pinned

Texts: `novel` is ../shared/data/war-and-peace-1mb.txt (long paragraphs of prose), `play` is
../shared/data/mind-the-paint-girl-play.txt (speaker names on their own lines, short speeches; Project Gutenberg's
licence, kept, is most of its held-out tenth), `code` is the Python standard library's top-level modules in name order,
joined until 1 MB (this interpreter's, `sysconfig` stdlib), and `sentences` the novel with every sentence its own
paragraph. Each run (TEXT:SECONDS) trains rlhf for SECONDS on each seed; nanoGPT (its own seed, 1337) runs once per
run, for its 2000 iterations scaled by SECONDS / 60 (what its recipe did in about the same time on the 2-core Xeon the
issue measured on; a slower CPU gives it more time than rlhf), and again for SECONDS (as many iterations as they allow,
its schedule spanning them: the same time on any machine; `--no-equal-time` skips it). rlhf
scores bits per byte of the UTF-8 (any tokenizer compares), nanoGPT bits per character, converted to bits per byte
with the held-out tenth's bytes per character. Target: the worst seed <= 0.85x nanoGPT's bits per byte on every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from bench.seeds import parse_seeds, rlhf_command

OUT = Path(__file__).parent / "out"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NOVEL, PLAY = DATA / "war-and-peace-1mb.txt", DATA / "mind-the-paint-girl-play.txt"


def stdlib_code(max_chars: int = 1_000_000) -> str:
    """The standard library's top-level modules, in name order, joined until `max_chars` (whole files only)."""
    import sysconfig

    out, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8")
        if size + len(text) > max_chars:
            break
        out.append(text)
        size += len(text)
    return "\n".join(out)


def sentences(text: str) -> str:
    """The novel with each sentence its own paragraph: lines unwrapped, a blank line after every sentence."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        out += [s for s in re.split(r'(?:(?<=[.!?])|(?<=[.!?]["\']))\s+(?=["\'A-Z])', flat) if s]
    return "\n\n".join(out) + "\n"


def rlhf_pretrain(path: Path, budget: float, run: Path, overrides: list[str]) -> dict:
    cmd = rlhf_command("pretrain", "--recipe", "text", "--overwrite", "-o", str(run), f"--set=pretrain.data.path={path}",
                       f"--set=pretrain.training.max_time={budget}", *[f"--set={o}" for o in overrides])  # fmt: skip
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode:
        raise SystemExit(f"rlhf pretrain failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    m = json.loads((run / "pretrain" / "eval.json").read_text())
    plan = m.get("plan") or {}
    said = ", ".join(
        f"{k} {plan[k]}" for k in ("hidden_size", "vocab_size", "block_size", "learning_rate") if plan.get(k)
    )
    return {"bits_per_byte": m["bits_per_byte"], "train_seconds": m["train_runtime_s"], "steps": m["global_step"],
            "parameters": m["parameters"], "dtype": m["dtype"], "plan": plan, "plan_said": said or "no auto settings",
            "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.pretrain_text", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="novel:60,play:60,code:60,novel:300", help="TEXT:SECONDS, comma-separated.")
    p.add_argument("--seeds", default="0-2", help="rlhf's seeds, e.g. 0-2 or 0,3.")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="Override for rlhf (repeatable).")
    p.add_argument("--no-equal-time", action="store_true", help="Skip nanoGPT's run for rlhf's seconds.")
    a = p.parse_args(argv)
    for path in (NOVEL, PLAY):
        if not path.exists():
            raise SystemExit(f"{path} is missing: this benchmark reads the shared texts (../shared/data).")
    from bench.nanogpt_char import train

    novel = NOVEL.read_text(encoding="utf-8")
    texts = {"novel": lambda: novel, "play": lambda: PLAY.read_text(encoding="utf-8"), "code": stdlib_code,
             "sentences": lambda: sentences(novel)}  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in a.runs.split(","):
            name, _, seconds = run.partition(":")
            budget = float(seconds or 60)
            text = texts[name]()
            path = Path(tmp) / f"{name}.txt"
            path.write_text(text, encoding="utf-8")
            held = text[int(0.9 * len(text)) :]
            bytes_per_char = len(held.encode()) / len(held)
            ours = [rlhf_pretrain(path, budget, Path(tmp) / f"run-{name}", [f"seed={seed}", *a.overrides])
                    for seed in parse_seeds(a.seeds)]  # fmt: skip
            theirs = train(text, iters=round(2000 * budget / 60))
            row = {"text": name, "budget_s": budget, "rlhf": ours, "bytes": len(text.encode())}
            said = " / ".join(f"{o['bits_per_byte']:.3f}" for o in ours)
            line = f"{name} {budget:g} s: rlhf {said} bits/byte ({ours[0]['plan_said']})"
            runs = {"": theirs} if a.no_equal_time else {"": theirs, "_equal_time": train(text, seconds=budget)}
            for key, run in runs.items():
                run["val_bits_per_byte"] = run["val_bits_per_char"] / bytes_per_char
                ratios = [o["bits_per_byte"] / run["val_bits_per_byte"] for o in ours]
                row |= {f"nanogpt{key}": run, f"ratios{key}": ratios, f"worst_ratio{key}": max(ratios)}
                line += (
                    f" | nanoGPT{' in the same time' if key else ''} {run['val_bits_per_byte']:.3f} bits/byte "
                    f"({run['iters']} iterations, {run['train_seconds']:.0f} s): worst ratio {max(ratios):.3f}"
                )
            rows.append(row)
            print(line + " (target <= 0.85)", flush=True)
    out = {"date": time.strftime("%Y-%m-%d"), "seeds": a.seeds, "overrides": a.overrides, "rows": rows,
           "worst_ratio": max(r["worst_ratio"] for r in rows) if rows else math.nan}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pretrain_text.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
