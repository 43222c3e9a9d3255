"""Run every benchmark in turn: `python -m bench` (what `make bench` runs). Add a module to BENCHMARKS to add one."""

from __future__ import annotations

import argparse
import importlib

# pipeline before ppo: ppo reuses its run
BENCHMARKS = [
    "bench.precision",
    "bench.pretrain",
    "bench.sft",
    "bench.pipeline",
    "bench.ppo",
    "bench.seeds",
    "bench.compare",
]


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        epilog="Each runs with its defaults; for options run one alone: "
        + ", ".join(f"python -m {name} --help" for name in BENCHMARKS),
    ).parse_args(argv)
    for name in BENCHMARKS:
        print(f"=== {name}")
        importlib.import_module(name).main([])  # its defaults, not this command line


if __name__ == "__main__":
    main()
