"""The run folder: every path a run holds, and when a step counts as finished — in one place.

<run>/recipe.yaml            the resolved recipe (rewritten as stages run)
<run>/.rlhf.lock             while a command writes into the run: who (rlhf_cli.lock; one writer at a time)
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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhf_cli.steps import MODEL_STAGES, STEPS

FINAL = "final"
STAGE_RECIPE = "recipe.yaml"  # in each stage folder: the resolved recipe the stage started with (--resume checks it)
LOCK_NAME = ".rlhf.lock"  # the run's lock (rlhf_cli.lock): the command writing into the run, and its process


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
