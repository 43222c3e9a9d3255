"""The run folder: stage folders that are never clobbered, atomic writes, lineage, and the Trainer callbacks every
stage shares (metrics.jsonl, progress line, NaN guard, Ctrl-C / SIGTERM -> checkpoint and exit 130).

    runs/<name>/recipe.yaml, <stage>/final/, <stage>/metrics.jsonl, <stage>/eval.json, <stage>/checkpoints/
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rlhf_cli.distributed import any_process, is_main_process, wait_for_everyone
from rlhf_cli.errors import UserError, is_input_error
from rlhf_cli.files import write_json_atomic, write_text_atomic
from rlhf_cli.layout import STAGE_RECIPE, RunLayout
from rlhf_cli.recipe import resume_differences, save_resolved


class Interrupted(Exception):
    """Raised after a checkpoint was saved because the user pressed Ctrl-C or the process got SIGTERM (exit 130)."""

    exit_code = 130


# ------------------------------------------------------------------------------------------------------ stage folders


def check_stage_dir(
    run_dir: Path, stage: str, *, resume: bool, overwrite: bool, recipe=None, accept_changes: bool = False
) -> Path:
    """The stage's folder path, checked against clobbering; writes nothing (call it before the inputs are validated).

    An existing stage folder is kept for `--resume`, replaced with `--overwrite` (by `prepare_stage_dir`), and otherwise
    refused. With `recipe`, a resume is refused when the recipe differs from the one the stage started with in a
    setting that changes what it trains (a resumed run would silently finish another run's training), unless
    `accept_changes` (`--accept-recipe-change`: continue with the new settings on purpose, e.g. more max_steps).
    """
    stage_dir = Path(run_dir) / stage
    if _holds_work(stage_dir) and not resume and not overwrite:
        raise UserError(
            f"{stage_dir} already exists; pass --resume to continue it, --overwrite to replace it, "
            f"or --output-dir to write elsewhere."
        )
    saved = stage_dir / STAGE_RECIPE
    if resume and recipe is not None and saved.is_file() and not accept_changes:
        import yaml

        changed = resume_differences(yaml.safe_load(saved.read_text(encoding="utf-8")) or {}, recipe, stage)
        if changed:
            listed = ", ".join(f"{k} was {then!r}, now {now!r}" for k, then, now in changed)
            again = " ".join(f"--set {k}={_yaml_value(then)}" for k, then, _ in changed)
            raise UserError(
                f"{stage}: --resume would continue {stage_dir} with another recipe ({listed}). To continue it as it "
                f"was started, resume with {again}; to continue with the new settings on purpose, add "
                f"--accept-recipe-change; to train {stage} again from the start, pass --overwrite instead."
            )
    return stage_dir


def _yaml_value(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def prepare_stage_dir(
    run_dir: Path, stage: str, *, resume: bool, overwrite: bool, recipe=None, accept_changes: bool = False
) -> Path:
    """Create (or with `--overwrite` empty) the stage's folder, checked against clobbering like `check_stage_dir`.

    The first write of a stage: call it once every input has been validated, so a mistake leaves the disk untouched.
    With `recipe`, the resolved recipe is saved as the run's `recipe.yaml` too.
    """
    stage_dir = Path(run_dir) / stage
    taken = _holds_work(stage_dir)
    check_stage_dir(run_dir, stage, resume=resume, overwrite=overwrite, recipe=recipe, accept_changes=accept_changes)
    wait_for_everyone()  # every process looks before the main one removes or creates anything
    if taken and overwrite and not resume and is_main_process():
        shutil.rmtree(stage_dir)
    if is_main_process():
        stage_dir.mkdir(parents=True, exist_ok=True)
        if recipe is not None:
            save_resolved(recipe, run_dir)
            if accept_changes or not (resume and (stage_dir / STAGE_RECIPE).exists()):  # what its training runs on
                write_text_atomic(stage_dir / STAGE_RECIPE, recipe.to_yaml())
    wait_for_everyone()
    return stage_dir


@contextlib.contextmanager
def no_trace_on_user_error(run_dir: Path):
    """On an input error (a UserError with exit code 2), remove what the command made before its checks failed: the
    toy world's files (written so the data can be checked; regenerated on the next use), new folders without a file in
    them (the empty `checkpoints/` a Trainer makes when it is built) and then a new run folder left empty. Never a file
    a stage wrote: those come after the checks."""
    run_dir = Path(run_dir)
    toy = RunLayout(run_dir).toy
    run_existed, toy_existed = run_dir.exists(), toy.exists()
    before = set(run_dir.iterdir()) if run_dir.is_dir() else set()
    try:
        yield
    except UserError as err:
        if is_input_error(err) and is_main_process() and run_dir.is_dir():
            if not toy_existed and toy.exists():
                shutil.rmtree(toy, ignore_errors=True)
            for child in set(run_dir.iterdir()) - before:
                if child.is_dir() and not any(p.is_file() for p in child.rglob("*")):
                    shutil.rmtree(child, ignore_errors=True)
            if not run_existed and not any(run_dir.iterdir()):
                run_dir.rmdir()
        raise


def _holds_work(stage_dir: Path) -> bool:
    """Anything in the folder but the empty `checkpoints/` a Trainer makes when it is built (before prepare_stage_dir)."""
    if not stage_dir.is_dir():
        return False
    return any(p.name != "checkpoints" or not p.is_dir() or any(p.iterdir()) for p in stage_dir.iterdir())


def resolve_model_dir(explicit: str | None, run_dir: Path, parent_stage: str, what: str) -> str:
    """A stage's starting model: `init_from` (a local path or hub id) or the parent stage's `final/` in this run."""
    if explicit:
        if _looks_local(explicit) and not Path(explicit).exists():
            raise UserError(f"{what}: '{explicit}' does not exist; give a model folder or a hub id (owner/name).")
        if Path(explicit).is_dir() and not (Path(explicit) / "config.json").exists():
            raise UserError(f"{what}: {explicit} is not a model folder (it has no config.json).")
        return explicit
    final = RunLayout(run_dir).final(parent_stage)
    if not (final / "config.json").exists():
        raise UserError(
            f"{what.split('.')[0]}: {final} does not exist — run `rlhf {parent_stage}` for this run first, or set {what} "
            "to a model folder or hub id."
        )
    return str(final)


def _looks_local(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or ref.count("/") != 1 or Path(ref).exists()


def newest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest *complete* `checkpoint-N` folder (one with trainer_state.json), not merely the highest number."""
    if not Path(ckpt_dir).is_dir():
        return None
    done = [p for p in Path(ckpt_dir).glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    done.sort(key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    return done[-1] if done else None


def write_lineage(final_dir: Path, *, stage: str, parents: dict[str, str], data: Any, recipe) -> None:
    """`lineage.json`: where this model came from, so a later stage can check its inputs."""
    write_json_atomic(
        Path(final_dir) / "lineage.json",
        {
            "stage": stage,
            "parents": parents,
            "data": data,
            "recipe_name": recipe.name,
            "recipe_hash": recipe.fingerprint(),
            "versions": library_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


def library_versions() -> dict[str, str]:
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "trl", "accelerate", "datasets", "peft", "rlhf-cli"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_model_card(final_dir: Path, *, title: str, body: str) -> None:
    write_text_atomic(
        Path(final_dir) / "README.md",
        f"---\nlibrary_name: transformers\ntags: [rlhf-cli]\n---\n\n# {title}\n\n{body}\n",
    )


# ------------------------------------------------------------------------------------------------------ Trainer callbacks


class StopOnSignal:
    """Ctrl-C / SIGTERM while training: the first sets `requested` (the loop saves a checkpoint at the end of its `what`
    and stops); a second exits at once. Every training loop (the Trainer stages' callback, PPO) uses this one."""

    def __init__(self, what: str = "step"):
        self.what, self.requested, self._old = what, False, {}

    def handle(self, signum, frame) -> None:
        if self.requested:
            print("\nInterrupted again: exiting now without saving.", file=sys.stderr)
            os._exit(130)
        self.requested = True
        print(
            f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this {self.what}, then stopping "
            "(press Ctrl-C again to exit at once).",
            file=sys.stderr,
        )

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self.handle)
            except ValueError:  # not the main thread
                pass

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def make_callbacks(stage_dir: Path, stage: str):
    """The callbacks every Trainer-based stage uses: metrics.jsonl + progress line, NaN guard, signal handling."""
    from transformers import TrainerCallback

    class RunCallback(TrainerCallback):
        def __init__(self):
            self.metrics_path = Path(stage_dir) / "metrics.jsonl"
            self.signals = StopOnSignal("step")
            self._start = None
            self.step_ends: list[float] = []  # perf_counter at each optimizer step's end (steady_seconds_per_step)

        @property
        def interrupted(self) -> bool:
            return self.signals.requested

        def _handle(self, signum, frame):
            self.signals.handle(signum, frame)

        def on_train_begin(self, args, state, control, **kw):
            self._start = time.time()
            self.signals.install()

        def on_train_end(self, args, state, control, **kw):
            self.signals.restore()
            if self.interrupted:  # the checkpoint of the interrupted step is saved: stop the stage here (exit 130)
                raise Interrupted(
                    f"{stage}: checkpoint saved under {Path(stage_dir) / 'checkpoints'}; continue with --resume."
                )

        def on_step_end(self, args, state, control, model=None, **kw):
            self.step_ends.append(time.perf_counter())
            self.signals.requested = any_process(self.interrupted, args.device)  # every rank stops at the same step
            if self.interrupted:
                control.should_save = True
                control.should_training_stop = True
            # A checkpoint is only ever a good one: weights that went non-finite between two logged losses are not saved.
            if control.should_save and model is not None and not all(p.isfinite().all() for p in model.parameters()):
                raise NonFiniteLoss(stage, state.global_step, "non-finite", what="weights")
            return control

        def on_log(self, args, state, control, logs=None, **kw):
            logs = dict(logs or {})
            for key in ("loss", "eval_loss"):
                if key in logs and not math.isfinite(float(logs[key])):
                    raise NonFiniteLoss(stage, state.global_step, logs[key])
            if not state.is_world_process_zero:
                return
            row = {
                "step": state.global_step,
                "epoch": state.epoch,
                "time": round(time.time() - (self._start or time.time()), 3),
                **logs,
            }
            with open(self.metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, default=float) + "\n")
            every = print_every(args.logging_steps, state.max_steps)
            if "train_runtime" in logs or any(k.startswith("eval_") for k in logs) or state.global_step % every == 0:
                print(log_line(stage, state.global_step, state.max_steps, logs, row["time"]), flush=True)

    return RunCallback()


LOG_LINES = 20  # training log lines a stage prints at most (metrics.jsonl keeps every logging step)
LOGGED = (  # key in the Trainer's logs -> label, format
    ("loss", "loss", ".4f"),
    ("eval_loss", "held-out loss", ".4f"),
    ("accuracy", "accuracy", ".3f"),
    ("eval_accuracy", "held-out accuracy", ".3f"),
    ("grad_norm", "grad norm", ".3g"),
    ("learning_rate", "lr", ".2e"),
)


def print_every(logging_steps, max_steps: int) -> int:
    """Print every n-th step, a multiple of the logging interval, so that a stage prints at most LOG_LINES lines."""
    import math

    logging_steps = max(1, int(logging_steps if logging_steps and logging_steps >= 1 else 1))
    return logging_steps * max(1, math.ceil(max(max_steps, 1) / (LOG_LINES * logging_steps)))


def log_line(stage: str, step: int, max_steps: int, logs: dict, seconds: float) -> str:
    """One formatted line per printed log: 'sft 40/150 | loss 0.4123 | grad norm 1.2 | lr 2.9e-03 | 6 s'."""
    if "train_runtime" in logs:
        loss = logs.get("train_loss")
        return f"{stage}: {step} steps in {float(logs['train_runtime']):.1f} s" + (
            f", mean training loss {float(loss):.4f}" if loss is not None else ""
        )
    parts = [f"{stage} {step}/{max_steps}"]
    parts += [f"{label} {float(logs[key]):{fmt}}" for key, label, fmt in LOGGED if logs.get(key) is not None]
    return " | ".join([*parts, f"{seconds:.0f} s"])


def quiet_trainer_logs(trainer) -> None:
    """transformers prints every log as a raw dict (PrinterCallback without a progress bar, the bar's own write with
    one); the stage's callback prints one formatted line instead (log_line)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ProgressCallback):
            callback.on_log = lambda *args, **kwargs: None


def warmup_steps_skipped(steps: int) -> int:
    """Steps left out of a steady-state speed: the first tenth, at least 2 (torch.compile, allocator, cache warm-up)."""
    return max(2, steps // 10)


def steady_seconds_per_step(step_ends: list[float]) -> float | None:
    """Mean step time after the warm-up steps, from each step's end time; None for fewer than 10 steps."""
    if len(step_ends) < 10:
        return None
    times = step_ends[warmup_steps_skipped(len(step_ends)) :]
    return (times[-1] - times[0]) / (len(times) - 1)


class NonFiniteLoss(UserError):
    """A NaN / inf loss (or weights): the run stops before saving anything from that step; exit code 1 (the run failed,
    though the input parsed), with one message that names the step and the usual causes."""

    def __init__(self, stage: str, step: int, value, what: str = "loss"):
        super().__init__(
            f"{stage}: the {what} became {value} at step {step}; the run stopped and the last good checkpoint is kept. "
            f"Usual causes: a learning rate too high (try a tenth), fp16 overflow (use bf16 or fp32), or bad data."
        )
        self.exit_code = 1


def nan_guard_args() -> dict[str, Any]:
    """TrainingArguments every stage sets: never hide a NaN loss (the Trainer default filters it out of the logs)."""
    return {"logging_nan_inf_filter": False}
