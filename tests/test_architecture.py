"""The package's import graph, imports inside functions included: no cycle, and no module imports one of a higher layer.

The layers, lowest first (docs/architecture.md draws them). A module may import its own layer and the ones below.
"""

import ast
from pathlib import Path

import rlhf_cli
from rlhf_cli.runtime.steps import MODEL_STAGES

LAYERS = [
    # leaves: no rlhf_cli import but one another
    [
        *("runtime.errors", "runtime.steps", "runtime.layout", "runtime.files", "runtime.distributed", "runtime.lock"),
        "runtime.precision",
        "models.hub",
        "people.offers",
        "evaluation.stats",
        *("data.toy", "ppo.core", "ppo.config"),
    ],
    # models, data, recipes, the one generation and one scoring path
    [
        "recipe",
        *("data", "data.read", "data.formats", "data.stage_data"),
        *("models.modeling", "models.generation", "models.scoring", "models.trainer_configs", "models.kwise"),
        "models.sizing",
        "evaluation.lm_eval",
    ],
    # run folders, checkpoints, callbacks; samples and rankings
    [
        *("runtime.runs", "runtime.callbacks"),
        "models.answers",
        *("people.feedback", "people.demonstrations", "people.web_label", "people.label_stats"),
    ],
    # what every stage shares: trainer configs, the lifecycle driver, the PPO loop, the evaluation of a run
    ["stages.common", "stages.driver", "ppo.trainer", "ppo.sources", "evaluation.evaluate"],
    # stages and the commands built on one stage or one run
    [
        *(f"stages.{name}" for name in MODEL_STAGES),  # every stage of the table (rlhf_cli.runtime.steps), one layer
        *("models.export", "models.chat"),
        *("evaluation.reward_inspect", "evaluation.report", "evaluation.check"),
    ],
    # many stages
    ["runtime.pipeline", "runtime.rounds", "evaluation.sweep", "evaluation.compare"],
    ["cli", "__main__"],
]
PACKAGES = {"", "stages", "ppo", "runtime", "models", "people", "evaluation"}  # __init__ files with no import
# Modules that import torch or transformers when imported: the only ones another module may import inside a function
# (so that importing it stays cheap), besides cli.py, whose command bodies import lazily to keep `rlhf --help` fast.
IMPORT_HEAVY = {"ppo.trainer", "ppo.config", "ppo.core", "models.trainer_configs", "stages.pretrain"}


def _graph(inside_functions_only: bool = False) -> dict[str, set[str]]:
    root = Path(rlhf_cli.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        modules[name.removesuffix(".__init__").removesuffix("__init__")] = path

    def resolve(name: str) -> str | None:
        name = name.removeprefix("rlhf_cli").lstrip(".")
        while name not in modules:
            if "." not in name:
                return None if name else ""
            name = name.rsplit(".", 1)[0]
        return name

    edges = {}
    for name, path in modules.items():
        found = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        scopes = [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
        nodes = [n for f in scopes for n in ast.walk(f)] if inside_functions_only else ast.walk(tree)
        for node in nodes:
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target.startswith("rlhf_cli"):
                    resolved = resolve(target)
                    if resolved is not None and resolved != name and resolved not in PACKAGES:
                        found.add(resolved)
        edges[name] = found
    return edges


def test_every_module_has_a_layer():
    layered = {m for layer in LAYERS for m in layer}
    assert set(_graph()) - PACKAGES == layered


def test_no_module_imports_a_higher_layer():
    level = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    upward = [f"{m} -> {t}" for m, ts in _graph().items() for t in ts if m in level and level[t] > level[m]]
    assert upward == []


def test_no_import_cycle():
    edges = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_internal_imports_are_at_the_top_of_modules():
    """An import inside a function hides the graph; only cli.py and imports of an import-heavy module may do it."""
    lazy = _graph(inside_functions_only=True)
    hidden = [f"{m} -> {t}" for m, ts in lazy.items() if m != "cli" for t in ts if t not in IMPORT_HEAVY]
    assert hidden == []
