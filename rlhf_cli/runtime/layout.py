"""The run folder: every path a run holds, and when a step counts as finished — in one place.

<run>/recipe.yaml            the resolved recipe (rewritten as stages run)
<run>/.rlhf.lock             while a command writes into the run: who (rlhf_cli.runtime.lock; one writer at a time)
<run>/pipeline.json          `rlhf pipeline`'s record: each step's status, seconds and headline
<run>/data/toy/              the toy world's files (a run's own world: its seed draws it)
<run>/<stage>/               pretrain, sft, reward, ppo: recipe.yaml (what the stage trains on), checkpoints/,
                             metrics.jsonl, eval.json, and final/ (written atomically: its presence means complete)
<run>/feedback/              samples.jsonl (sample), rankings.jsonl (label), skipped.jsonl, backup/
<run>/feedback/people/       a people's round (`rlhf label --people`): the same files, ranked by people beside the
                             annotator's rankings above (which stay as they are); `rlhf reward` trains on both
<run>/demonstrations/        drafts.jsonl, demonstrations.jsonl (`rlhf write`: people's SFT answers), skipped.jsonl, backup/
<run>/eval/eval.json         `rlhf eval`
<run>/report/                report.json, report.md and the plots
<run>/rounds/round-k/, <run>/sweep*/<point>/   run folders of their own, inside the run (`rlhf pipeline --rounds`,
                             `rlhf sweep`)

A run can be moved or copied: every path its files store that points inside it is relative to the run folder
(`path_in_run`), and every reader resolves it against the run folder it found the file in (`resolve_in_run`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rlhf_cli.runtime.steps import MODEL_STAGES, STEPS

FINAL = "final"
STAGE_RECIPE = "recipe.yaml"  # in each stage folder: the resolved recipe the stage started with (--resume checks it)
LOCK_NAME = ".rlhf.lock"  # the run's lock (rlhf_cli.runtime.lock): the command writing into the run, and its process


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder. `RunLayout(run_dir).final("sft")` is `<run>/sft/final`."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    # the run
    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def lock(self) -> Path:
        return self.root / LOCK_NAME

    @property
    def pipeline_record(self) -> Path:
        return self.root / "pipeline.json"

    @property
    def toy(self) -> Path:
        return self.root / "data" / "toy"

    # model stages
    def stage(self, name: str) -> Path:
        return self.root / name

    def final(self, name: str) -> Path:
        return self.root / name / FINAL

    def checkpoints(self, name: str) -> Path:
        return self.root / name / "checkpoints"

    def eval_json(self, name: str) -> Path:
        return self.root / name / "eval.json"

    def metrics(self, name: str) -> Path:
        return self.root / name / "metrics.jsonl"

    def stage_recipe(self, name: str) -> Path:
        return self.root / name / STAGE_RECIPE

    # feedback, eval, report
    @property
    def feedback(self) -> Path:
        return self.root / "feedback"

    @property
    def samples(self) -> Path:
        return self.feedback / "samples.jsonl"

    @property
    def rankings(self) -> Path:
        return self.feedback / "rankings.jsonl"

    @property
    def rankings_so_far(self) -> Path:
        """A later round of `rlhf pipeline --rounds`: every round's rankings, which its reward model trains on."""
        return self.feedback / "rankings_so_far.jsonl"

    @property
    def skipped(self) -> Path:
        return self.feedback / "skipped.jsonl"

    @property
    def people(self) -> Path:
        """A people's round: fresh samples that people rank beside the annotator's rankings (a feedback folder)."""
        return self.feedback / "people"

    @property
    def people_samples(self) -> Path:
        return self.people / "samples.jsonl"

    @property
    def people_rankings(self) -> Path:
        return self.people / "rankings.jsonl"

    # demonstrations people write (`rlhf write`)
    @property
    def demonstrations_dir(self) -> Path:
        return self.root / "demonstrations"

    @property
    def drafts(self) -> Path:
        return self.demonstrations_dir / "drafts.jsonl"

    @property
    def demonstrations(self) -> Path:
        return self.demonstrations_dir / "demonstrations.jsonl"

    @property
    def demonstrations_skipped(self) -> Path:
        return self.demonstrations_dir / "skipped.jsonl"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report_json(self) -> Path:
        return self.report_dir / "report.json"

    @property
    def report_md(self) -> Path:
        return self.report_dir / "report.md"

    @property
    def rounds_json(self) -> Path:
        return self.root / "rounds" / "rounds.json"

    def round_dir(self, k: int) -> Path:
        """Round k (from 2) of `rlhf pipeline --rounds`: a run folder of its own; round 1 is this run."""
        return self.root / "rounds" / f"round-{k}"

    def sweep_dir(self, stage: str) -> Path:
        """`rlhf sweep` of a `stage` setting: one run folder per value in it (PPO's sweep keeps its older name)."""
        return self.root / ("sweep" if stage == "ppo" else f"sweep-{stage}")

    @property
    def compare_dir(self) -> Path:
        return self.root / "compare"

    def output(self, step: str) -> Path:
        """The folder or file whose presence means `step` has produced something."""
        return {
            "sample": self.samples,
            "label": self.rankings,
            "eval": self.eval_json("eval"),
            "report": self.report_json,
        }.get(step, self.stage(step))

    def started(self, step: str) -> bool:
        out = self.output(step)
        return out.is_file() or (out.is_dir() and any(out.iterdir()))

    def missing_up_to(self, step: str) -> list[str]:
        """The steps of the pipeline up to and including `step` that have not finished in this run, in order."""
        return [s for s in STEPS[: STEPS.index(step) + 1] if not self.finished(s)]

    def finished(self, step: str, annotator: str | None = None) -> bool:
        """Whether `step`'s output exists and is complete.

        A model stage: final/ with config.json (written atomically) and its eval.json (written after it). Samples and
        toy/file labels: the file (written atomically). Human labels are never taken as finished: the labelling screen itself continues where the person
        stopped and returns at once when nothing is left to rank.
        """
        if step in MODEL_STAGES:
            return (self.final(step) / "config.json").exists() and self.eval_json(step).exists()
        if step == "label" and annotator in ("human", "web"):  # people may have stopped part-way
            return False
        return self.output(step).is_file()


def is_stage_folder(path: str | Path) -> bool:
    """`<run>/<stage>` of a model stage (its recipe.yaml is the stage's, not a run's)."""
    path = Path(path)
    return path.name in MODEL_STAGES and is_run_folder(path.parent)


def is_run_folder(path: str | Path) -> bool:
    """A folder a run writes into: it holds the run's recipe.yaml or pipeline.json, or a model stage's folder."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / "pipeline.json").is_file():
        return True
    if (path / "recipe.yaml").is_file() and not (path.name in MODEL_STAGES and (path.parent / "recipe.yaml").is_file()):
        return True
    return any((path / s / FINAL).is_dir() or (path / s / STAGE_RECIPE).is_file() for s in MODEL_STAGES)


def enclosing_run(path: str | Path) -> Path | None:
    """The run folder `path` is in (or is): the nearest folder, `path` included, that is a run folder; None outside
    any run. A path that does not exist yet is looked up from its nearest existing folder."""
    probe = Path(path).expanduser().absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    for folder in (probe, *probe.parents):
        if is_run_folder(folder):
            return folder
    return None


# ------------------------------------------------------------------------------------------------ paths a run stores
# A run folder can be moved or copied (to another disk, another machine, a student's laptop): the paths its files
# store that point inside it are relative to it, and resolved against the folder a reader finds the file in.


def holding_run(run_dir: str | Path) -> Path | None:
    """The run a nested run belongs to (`<run>/rounds/round-k`, `<run>/sweep*/<point>`: run folders of their own that
    use the run's models); None for a run of its own."""
    folder = Path(run_dir).absolute()
    parent = folder.parent
    if (parent.name == "rounds" or parent.name.startswith("sweep")) and is_run_folder(parent.parent):
        return holding_run(parent.parent) or parent.parent
    return None


def path_in_run(path: str | Path | None, run_dir: str | Path | None) -> str | None:
    """`path` as a run's files store it: relative to `run_dir` when it lies inside the run (for a nested run, inside
    the run holding it: `../../sft/final`), so the folder can be moved; a place on disk outside the run (a user's
    data file, a model folder elsewhere) absolute; anything else as given (a hub id; any path when `run_dir` is None:
    a file in no run)."""
    if path is None or run_dir is None:
        return None if path is None else str(path)
    here, run = Path(path).expanduser(), Path(run_dir)
    if not (here.is_absolute() or here.exists() or run in here.parents):
        return str(path)  # a hub id or a name (pretrain's "scratch"), not a place on disk
    top = holding_run(run) or run
    for target, base, root in (
        (Path(os.path.abspath(here)), Path(os.path.abspath(run)), Path(os.path.abspath(top))),
        (here.resolve(), run.resolve(), top.resolve()),  # through links (a round's sft/ is one)
    ):
        if target == root or root in target.parents:
            return Path(os.path.relpath(target, base)).as_posix()
    # a place outside the run (a user's data file): absolute, or it would be read back against the run
    return os.path.abspath(here)


def link_in_run(link: Path, target: Path) -> None:
    """A symbolic link `link` -> `target`, both inside one run (a round or sweep point sharing the run's folders),
    stored relative to the link's folder: it still points at the run's own folder once the run is moved."""
    os.symlink(os.path.relpath(Path(target).resolve(), Path(link).parent.resolve()), link, target_is_directory=True)


def resolve_in_run(stored: str | None, run_dir: str | Path) -> str | None:
    """A path read from a run's files, to open: a relative one against `run_dir` (the folder the file was found in);
    an absolute one (older runs wrote those) as it is, or, when it is gone because the run was moved, the same place
    in this run (`/old/place/run/feedback/rankings.jsonl` -> `<run_dir>/feedback/rankings.jsonl`). A path that
    is neither (a hub id, a path relative to where the command ran) comes back as stored."""
    if not stored:
        return stored
    run, path = Path(run_dir), Path(stored).expanduser()
    if not path.is_absolute():
        inside = Path(os.path.normpath(run / path))
        return str(inside) if inside.exists() else stored
    if path.exists():
        return stored
    top = holding_run(run) or run
    for i in range(1, len(path.parts) - 1):  # the longest tail that exists in the run, of two names at least
        moved = top / Path(*path.parts[i:])
        if moved.exists():
            return str(moved)
    return stored
