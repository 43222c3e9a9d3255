"""Run every benchmark in turn: `python -m bench` (what `make bench` runs). Add a module to BENCHMARKS to add one."""

from __future__ import annotations

import importlib

BENCHMARKS = ["bench.pretrain", "bench.sft", "bench.pipeline", "bench.ppo"]  # pipeline before ppo: ppo reuses its run


def main() -> None:
    for name in BENCHMARKS:
        print(f"=== {name}")
        importlib.import_module(name).main()


if __name__ == "__main__":
    main()
