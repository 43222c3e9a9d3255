"""Pre-training on a user's own text in 60 seconds: `rlhf pretrain --recipe text` against nanoGPT's CPU character
recipe (bench/nanogpt_char.py), side by side, on English texts of two shapes, the first 90 % to train, the last 10 %
held out.

    .venv/bin/python -m bench.pretrain_text                      # -> table + bench/out/pretrain_text.json
    .venv/bin/python -m bench.pretrain_text --budget 30 --texts prose

Texts: `prose` is ../shared/data/war-and-peace-1mb.txt as it is (long paragraphs); `sentences` is the same novel with
every sentence its own paragraph (a blank line after each: text of many short blocks, as dialogue or verse is). Each
side scores the held-out tenth as written: rlhf in bits per byte of its UTF-8 (any tokenizer compares), nanoGPT in
bits per character (its own validation loss) and, converted with the held-out tenth's bytes per character, per byte.
The target is rlhf <= 0.9x nanoGPT's bits per byte on every text.
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

from bench.seeds import rlhf_command

OUT = Path(__file__).parent / "out"
NOVEL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "war-and-peace-1mb.txt"


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
    return {"bits_per_byte": m["bits_per_byte"], "train_seconds": m["train_runtime_s"], "steps": m["global_step"],
            "parameters": m["parameters"], "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.pretrain_text", description=__doc__.split("\n\n")[0])
    p.add_argument("--texts", default="prose,sentences", help="Comma-separated: prose, sentences.")
    p.add_argument("--budget", type=float, default=60.0, help="rlhf's training seconds (nanoGPT: its 2000 iterations).")
    p.add_argument("--iters", type=int, default=2000, help="nanoGPT's iterations (~55-65 s on 2 cores).")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="Override for rlhf (repeatable).")
    a = p.parse_args(argv)
    if not NOVEL.exists():
        raise SystemExit(f"{NOVEL} is missing: this benchmark reads the shared novel (../shared/data).")
    from bench.nanogpt_char import train

    novel = NOVEL.read_text(encoding="utf-8")
    texts = {"prose": novel, "sentences": sentences(novel)}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.texts.split(","):
            text = texts[name]
            path = Path(tmp) / f"{name}.txt"
            path.write_text(text, encoding="utf-8")
            held = text[int(0.9 * len(text)) :]
            bytes_per_char = len(held.encode()) / len(held)
            ours = rlhf_pretrain(path, a.budget, Path(tmp) / f"run-{name}", a.overrides)
            theirs = train(text, iters=a.iters)
            theirs["val_bits_per_byte"] = theirs["val_bits_per_char"] / bytes_per_char
            rows[name] = {"rlhf": ours, "nanogpt": theirs, "ratio": ours["bits_per_byte"] / theirs["val_bits_per_byte"],
                          "chars": len(text), "paragraphs": text.count("\n\n") + 1}  # fmt: skip
            print(f"{name}: rlhf {ours['bits_per_byte']:.3f} bits/byte ({ours['train_seconds']:.0f} s, {ours['steps']} "
                  f"steps) | nanoGPT {theirs['val_bits_per_char']:.3f} bits/char = {theirs['val_bits_per_byte']:.3f} "
                  f"bits/byte ({theirs['train_seconds']:.0f} s) | ratio {rows[name]['ratio']:.3f} (target <= 0.9)",
                  flush=True)  # fmt: skip
    out = {"budget_s": a.budget, "overrides": a.overrides, "rows": rows, "date": time.strftime("%Y-%m-%d"),
           "worst_ratio": max(r["ratio"] for r in rows.values()) if rows else math.nan}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pretrain_text.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
