"""The one lifecycle every training stage runs through; a stage supplies only what differs (a `setup` returning a Job).

    check the stage folder (writes nothing) -> [--resume of a finished stage: keep it] -> stage.setup: data, tokenizer,
    model, trainer, every input checked, still writing nothing -> first line: size and precision -> prepare the stage
    folder (the first write; --overwrite empties it; recipe.yaml saved) -> newest complete checkpoint (--resume) ->
    train (Ctrl-C / SIGTERM: checkpoint, Interrupted, exit 130) -> evaluate -> final/ written atomically -> eval.json
    -> the stage's summary line

A new stage is a module with `STAGE` and `setup(ctx) -> Job`, plus `run = driver.stage_runner(STAGE, setup)`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_cli.runtime import callbacks, distributed, files, runs
from rlhf_cli.runtime.layout import RunLayout
from rlhf_cli.stages.common import announce


@dataclass(frozen=True)
class StageContext:
    """What a stage's setup is given: the recipe, the run folder's layout, its own folder, and whether it resumes."""

    recipe: Any
    layout: RunLayout
    stage_dir: Path
    resume: bool


@dataclass
class Job:
    """What a stage's setup built, having written nothing; the driver runs the rest of the lifecycle with it.

    trainer: has `.train(resume_from_checkpoint=str | None)` (a transformers Trainer, TRL's, or rlhf's PPOTrainer).
    evaluate(output, checkpoint): the metrics of the trained model (every process calls it; main-only work guards
      itself); `output` is what train() returned, `checkpoint` the one it resumed from (None: from the start).
    write_final(tmp, metrics, staging): fills the final folder's temporary twin (main process; the driver renames it).
    summary(final, metrics): the stage's last lines (main process).
    prepared(): after the stage folder exists, before training (e.g. keep a trained tokenizer for --resume).
    export(staging): every process, before write_final: gather weights sharded across processes into `staging`.
    """

    trainer: Any
    n_params: int | None
    evaluate: Callable[[Any, Path | None], dict]
    write_final: Callable[[Path, dict, Path | None], None]
    summary: Callable[[Path, dict], None]
    prepared: Callable[[], None] | None = None
    export: Callable[[Path], None] | None = None

    @property
    def checkpoints(self) -> Path:
        return Path(self.trainer.args.output_dir)


class NoTraining:
    """The trainer of an inference-time method (best-of-n): nothing to train, no checkpoints; its work is evaluate."""

    def __init__(self, stage_dir: Path):
        self.args = type("Args", (), {"output_dir": str(Path(stage_dir) / "checkpoints")})()

    def train(self, resume_from_checkpoint=None):
        return None


def run_stage(
    name: str,
    setup: Callable[[StageContext], Job],
    recipe,
    run_dir,
    *,
    resume: bool = False,
    overwrite: bool = False,
    accept_changes: bool = False,
) -> dict:
    """Run stage `name` of `recipe` into `run_dir` through the whole lifecycle; returns its eval metrics."""
    layout = RunLayout(run_dir)
    folder = dict(resume=resume, overwrite=overwrite, recipe=recipe, accept_changes=accept_changes)
    stage_dir = runs.check_stage_dir(layout.root, name, **folder)  # nothing written before the checks
    runs.check_model_kinds(recipe, name)  # a model of the wrong kind is refused before any model loads
    if resume and not accept_changes and layout.finished(name):
        if distributed.is_main_process():
            print(f"{name}: already finished, keeping {layout.final(name)}")
        return files.read_json(layout.eval_json(name))

    job = setup(StageContext(recipe, layout, stage_dir, resume))
    if hasattr(job.trainer, "callback_handler"):  # a transformers Trainer: one formatted line per log, not a dict
        callbacks.quiet_trainer_logs(job.trainer)
    chosen = announce(recipe, name, job.n_params, "answering" if isinstance(job.trainer, NoTraining) else "training")
    runs.prepare_stage_dir(layout.root, name, **folder)  # inputs are good: first write
    if job.prepared and distributed.is_main_process():
        job.prepared()
    checkpoint = runs.newest_checkpoint(job.checkpoints) if resume else None
    started = job.checkpoints.is_dir() and any(job.checkpoints.iterdir())  # a stage not begun yet says nothing
    if resume and checkpoint is None and started and distributed.is_main_process():
        print(f"{name}: no complete checkpoint in {job.checkpoints}; starting from the beginning.")
    output = job.trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    metrics = {**job.evaluate(output, checkpoint), **chosen, **distributed.peak_gpu_memory()}
    final = layout.final(name)
    with tempfile.TemporaryDirectory() as staging:  # every process takes part in gathering sharded weights
        if job.export:
            job.export(Path(staging))
        if distributed.is_main_process():
            files.save_dir_atomic(
                final, lambda tmp: job.write_final(tmp, metrics, Path(staging) if job.export else None)
            )
    if distributed.is_main_process():
        files.write_json_atomic(layout.eval_json(name), metrics)
        job.summary(final, metrics)
    distributed.wait_for_everyone()
    return metrics


def stage_runner(name: str, setup: Callable[[StageContext], Job]) -> Callable[..., dict]:
    """The stage's `run(recipe, run_dir, *, resume, overwrite, accept_changes)`, as the CLI and pipeline call it."""

    def run(recipe, run_dir, *, resume: bool = False, overwrite: bool = False, accept_changes: bool = False) -> dict:
        return run_stage(
            name, setup, recipe, run_dir, resume=resume, overwrite=overwrite, accept_changes=accept_changes
        )

    run.__doc__ = f"Run the {name} stage through the shared lifecycle (rlhf_cli.stages.driver); returns its metrics."
    return run
