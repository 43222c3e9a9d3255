"""`rlhf pipeline`: every stage in order, into one run folder, each from the one before — the main job.

    rlhf pipeline                                   # the embedded tiny recipe -> runs/tiny
    rlhf pipeline --recipe tiny --resume            # keep finished stages, run the rest (an unfinished one resumes)
    rlhf pipeline --stages sample,label,reward --overwrite

Steps: pretrain -> sft -> sample -> label -> reward -> ppo -> eval -> report. A step is finished when its output is
complete: a model stage's `final/` (written atomically, so its presence means complete), the feedback files, the eval and
report JSON. Without `--resume` or `--overwrite` an existing stage output is refused before anything runs (eval and
report are summaries: they are rewritten). Each step's wall time
and headline metric go to `<run>/pipeline.json` (rewritten atomically after every step) and a table at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhf_cli.evaluation.evaluate import evaluate_run
from rlhf_cli.evaluation.report import assess, build_report, step_headline
from rlhf_cli.people.feedback import label, labelling_progress, sample
from rlhf_cli.recipe import save_resolved
from rlhf_cli.runtime.distributed import is_main_process, wait_for_everyone
from rlhf_cli.runtime.errors import UserError, is_input_error
from rlhf_cli.runtime.files import read_json, write_json_atomic
from rlhf_cli.runtime.layout import RunLayout, path_in_run, resolve_in_run
from rlhf_cli.runtime.lock import run_lock
from rlhf_cli.runtime.runs import Interrupted, check_model_kinds, no_trace_on_user_error
from rlhf_cli.runtime.steps import DEFAULT_STEPS, MODEL_STAGES, STEPS, step_name
from rlhf_cli.stages.common import build_trainer_configs

TARGETS_MISSED = 3  # exit code: every step finished, but a recipe target was missed or a red flag raised


def parse_stages(stages: str | list[str] | None) -> list[str]:
    """The steps to run, in pipeline order; an unknown name is a UserError listing the valid ones."""
    if stages is None:
        return list(DEFAULT_STEPS)
    names = [step_name(s) for s in (stages.split(",") if isinstance(stages, str) else stages) if s.strip()]
    unknown = [s for s in names if s not in STEPS]
    if unknown or not names:
        import difflib

        hints = [
            f"'{u}'" + (f" (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(u, STEPS, n=1)) else "")
            for u in unknown
        ]
        what = f"unknown stage {', '.join(hints)}" if unknown else "no stage given"
        raise UserError(f"--stages: {what}; valid stages are {','.join(STEPS)}.")
    return [s for s in STEPS if s in names]


def check_steps(recipe, run_dir: Path, steps: list[str]) -> None:
    """Before the first step runs: every training step's trainer config builds from the recipe, and every model the
    recipe names for a step is of the kind its key needs (rlhf_cli.runtime.runs.check_model_kinds) — a mistake in the last
    step costs a second, not the minutes of the steps before it."""
    build_trainer_configs(recipe, run_dir, [s for s in steps if s in MODEL_STAGES])
    for step in steps:
        if step in MODEL_STAGES:
            check_model_kinds(recipe, step)


def _model_stage(name: str) -> Callable[..., Any]:
    def run(recipe, run_dir: Path, **flags):
        import importlib

        return importlib.import_module(f"rlhf_cli.stages.{name}").run(recipe, run_dir, **flags)

    return run


def _sample(recipe, run_dir: Path, *, overwrite: bool, **_):

    return sample(recipe, run_dir, overwrite=overwrite)


def _label(recipe, run_dir: Path, *, overwrite: bool, **_):
    """Rank the samples; a partly labelled file is continued (the human screen resumes) unless --overwrite (which backs
    it up). A person who stopped part-way stops the pipeline: the reward model must not train on part of the rankings."""

    layout = RunLayout(run_dir)
    again = f"rlhf pipeline --recipe {layout.recipe} --output-dir {run_dir} --resume"
    out = label(recipe, run_dir, overwrite=overwrite, continue_with=again)
    if recipe.feedback.annotator == "human":
        done, total = labelling_progress(layout.feedback)
        if done < total:
            raise Interrupted(f"label: {done} of {total} prompts ranked so far ({out}); continue with: {again}")
    return out


def _on_main_process(summarise: Callable[[Path, Any], Any]) -> Callable[..., Any]:
    """eval and report summarise the run: under several processes the main one writes, the others wait."""

    def run(recipe, run_dir: Path, **_):
        result = summarise(run_dir, recipe) if is_main_process() else None
        wait_for_everyone()
        return result

    return run


def _eval(run_dir: Path, recipe):

    return evaluate_run(run_dir, recipe=recipe)


def _report(run_dir: Path, recipe):

    return {"report": str(build_report(run_dir))}


def _run_step(step: str, recipe, run_dir: Path, **flags):
    return RUNNERS[step](recipe, run_dir, **flags)


# Every step: name -> run(recipe, run_dir, *, resume, overwrite, accept_changes). A model stage (rlhf_cli.runtime.steps) runs
# its module's `run`; the other four are written here.
RUNNERS: dict[str, Callable[..., Any]] = {
    **{name: _model_stage(name) for name in MODEL_STAGES},
    "sample": _sample,
    "label": _label,
    "eval": _on_main_process(_eval),
    "report": _on_main_process(_report),
}


def run_pipeline(
    recipe,
    run_dir: str | Path,
    stages: str | list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    accept_changes: bool = False,
) -> dict:
    """Run the chosen steps of the pipeline in order into `run_dir`; returns the pipeline record (pipeline.json).

    Args:
        recipe: the resolved Recipe.
        run_dir: the run folder.
        stages: a comma-separated subset (or list) of STEPS; default all.
        resume: keep finished steps, run the rest (an unfinished model stage continues from its newest checkpoint).
        overwrite: replace the chosen steps' existing outputs.
        accept_changes: with resume, continue an unfinished stage although the recipe now differs from its own.
    Raises:
        UserError: an unknown stage name, or existing outputs without --resume/--overwrite, or another command
        writing into the run (its lock, rlhf_cli.runtime.lock).
    """
    with run_lock(run_dir):
        return _run_pipeline(recipe, Path(run_dir), stages, resume, overwrite, accept_changes)


def _run_pipeline(recipe, run_dir: Path, stages, resume: bool, overwrite: bool, accept_changes: bool) -> dict:
    from rich.console import Console

    layout = RunLayout(run_dir)
    steps = parse_stages(stages if stages is not None else recipe.stages)
    if resume and overwrite:
        raise UserError("--resume keeps finished stages and --overwrite replaces them: pass one of the two.")
    existing = [s for s in steps if s not in ("eval", "report") and layout.started(s)]  # those two are rewritten
    if existing and not (resume or overwrite):
        raise UserError(
            f"{run_dir} already has {', '.join(existing)}; pass --resume to keep finished stages and run the rest, "
            f"--overwrite to replace them, or --output-dir to write elsewhere."
        )
    check_steps(recipe, run_dir, steps)
    console = Console(quiet=not is_main_process())  # several processes: one prints
    record_path = layout.pipeline_record
    record = {"recipe": recipe.name, "run_dir": path_in_run(run_dir, run_dir), "steps": {}}  # paths relative to the run
    if resume and record_path.exists():
        old = read_json(record_path)
        record["steps"] = old.get("steps", {})
        saved = layout.recipe
        if saved.exists() and saved.read_text(encoding="utf-8") != recipe.to_yaml():
            console.print(
                "[yellow]The recipe differs from the one this run started with; finished stages keep "
                "their old settings.[/]"
            )
    # recipe.yaml and pipeline.json are written once a step has run: a mistake the first step finds leaves no trace.
    console.print(f"[bold]rlhf pipeline[/] {recipe.name} -> {run_dir}  (steps: {', '.join(steps)})")

    start = time.time()
    for step in steps:
        if resume and layout.finished(step, recipe.feedback.annotator):
            console.print(f"[dim]{step}: finished already, kept ({layout.output(step)})[/]")
            record["steps"].setdefault(step, {})["status"] = "kept"
            continue
        console.rule(f"[bold]{step}")
        t0 = time.time()
        entry = {"status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        record["steps"][step] = entry
        try:
            with no_trace_on_user_error(run_dir):  # per step: never removes what an earlier step made
                _run_step(step, recipe, run_dir, resume=resume, overwrite=overwrite, accept_changes=accept_changes)
            wait_for_everyone()  # several processes: the next step reads what the main process just saved
        except BaseException as err:
            stopped = isinstance(err, (Interrupted, KeyboardInterrupt))
            entry.update(status="interrupted" if stopped else "failed", seconds=round(time.time() - t0, 2))
            # An input error wrote nothing; record it only in a run that holds something already.
            untouched = is_input_error(err) and not record_path.exists()
            if is_main_process() and not untouched:
                write_json_atomic(record_path, record)
            raise
        entry.update(status="done", seconds=round(time.time() - t0, 2))
        if is_main_process():
            save_resolved(recipe, run_dir)
            write_json_atomic(record_path, record)

    for step, entry in record["steps"].items():
        entry["headline"] = step_headline(run_dir, step)
    record["total_seconds"] = round(time.time() - start, 2)
    report = layout.report_md
    record["report"] = path_in_run(report, run_dir) if report.exists() else None
    verdict = assess(run_dir)
    # The steps that ran decide: a missed target of a stage this call did not reach is not a finding.
    record["targets_missed"] = verdict["missed"] if set(steps) >= {"eval"} else []
    record["red_flags"] = verdict["red_flags"] if set(steps) >= {"eval"} else []
    record["cautions"] = verdict["cautions"] if set(steps) >= {"eval"} else []
    if is_main_process():
        write_json_atomic(record_path, record)
        _print_summary(console, record, run_dir)
    return record


def _print_summary(console, record: dict, run_dir: Path) -> None:
    from rich.table import Table

    table = Table(title=f"rlhf pipeline: {record['recipe']}")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("headline metric")
    for step in STEPS:
        entry = record["steps"].get(step)
        if entry is None:
            continue
        seconds = entry.get("seconds")
        headline = entry.get("headline") or {}
        table.add_row(
            step, entry.get("status", ""), f"{seconds:.1f} s" if seconds is not None else "-", headline.get("text", "")
        )
    console.print(table)
    console.print(f"Total {record['total_seconds']:.1f} s. Timings: {RunLayout(run_dir).pipeline_record}")
    if record.get("report"):
        console.print(f"[bold]Report: {resolve_in_run(record['report'], run_dir)}[/]")
    for missed in record.get("targets_missed", []):
        console.print(f"[bold red]Target missed:[/] {missed}")
    for note in record.get("cautions", []):
        console.print(f"[bold yellow]Caution:[/] {note}")
    for flag in record.get("red_flags", []):
        console.print(f"[bold red]Red flag:[/] {flag}")
    if record.get("targets_missed") or record.get("red_flags"):
        console.print(f"[bold red]Finished, targets missed[/] (exit code {TARGETS_MISSED}).")


def load_record(run_dir: str | Path) -> dict | None:
    path = RunLayout(run_dir).pipeline_record
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
