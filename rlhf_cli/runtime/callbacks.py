"""What every training loop shares: metrics.jsonl and one formatted log line per printed step, the NaN guard (a
non-finite loss or weights stop the run before anything of that step is saved), Ctrl-C / SIGTERM -> a checkpoint at
the end of the step and exit 130, and the steady-state step time."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rlhf_cli.runtime.distributed import any_process
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.runs import Interrupted


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
