"""Stage folders that are never clobbered (and a resume that checks the recipe), the starting model of a stage, the
newest complete checkpoint, lineage and model cards. The Trainer callbacks every stage shares are in `callbacks`.

    runs/<name>/recipe.yaml, <stage>/final/, <stage>/metrics.jsonl, <stage>/eval.json, <stage>/checkpoints/
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Any

from rlhf_cli.models.modeling import CAUSAL_LM, REWARD_MODEL, check_model_kind
from rlhf_cli.recipe import resume_differences, save_resolved
from rlhf_cli.runtime.distributed import is_main_process, wait_for_everyone
from rlhf_cli.runtime.errors import UserError, is_input_error
from rlhf_cli.runtime.files import read_json, write_json_atomic, write_text_atomic
from rlhf_cli.runtime.layout import STAGE_RECIPE, RunLayout, enclosing_run, path_in_run, resolve_in_run
from rlhf_cli.runtime.steps import DEFAULT_STEPS, STEPS


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
    if resume and overwrite:
        raise UserError("--resume continues the stage and --overwrite replaces it: pass one of the two.")
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


def resolve_model_dir(
    explicit: str | None, run_dir: Path, parent_stage: str, what: str, needs_up_to: str | None = None, recipe=None
) -> str:
    """A stage's starting model: `init_from` (a local path or hub id) or the parent stage's `final/` in this run,
    checked for the kind of model the setting `what` needs (`expected_kind`). `needs_up_to`: the last step the stage
    needs from this run (PPO: the reward model too), for the message that names every step still to run."""
    kind = expected_kind(what)
    if explicit:
        if _looks_local(explicit) and not Path(explicit).exists():
            raise UserError(f"{what}: '{explicit}' does not exist; give a model folder or a hub id (owner/name).")
        if Path(explicit).is_dir() and not (Path(explicit) / "config.json").exists():
            raise UserError(f"{what}: {explicit} is not a model folder (it has no config.json).")
        if kind is not None:
            check_model_kind(explicit, kind, what)
        return explicit
    layout = RunLayout(run_dir)
    final = layout.final(parent_stage)
    if not (final / "config.json").exists():
        raise UserError(
            f"{what.split('.')[0]}: {final} does not exist — run {run_first(layout, needs_up_to or parent_stage, recipe)} for this run "
            f"first, or set {what} to a model folder or hub id."
        )
    if kind is not None:
        check_model_kind(str(final), kind, what)
    return str(final)


def expected_kind(what: str) -> str | None:
    """The kind of model a setting names: a reward model for `*.reward_from` and `ppo.rewards[i].model`, either for
    `reward.init_from` (a causal LM gets a fresh score head; a reward model trains on) and `ppo.value_from` (the same
    for the value head), a causal LM for every other (policies, references, `init_from`, `--model`)."""
    key = what.removeprefix("--")
    if key.endswith(".reward_from") or (key.startswith("ppo.rewards[") and key.endswith(".model")):
        return REWARD_MODEL
    if key in ("reward.init_from", "ppo.value_from"):
        return None
    return CAUSAL_LM


def check_model_kinds(recipe, stage: str) -> None:
    """Every model `stage`'s recipe section names by path or hub id (`init_from`, `policy_from`, `reward_from`,
    `rewards[i].model`, `value_from`), checked for its kind before anything loads: a mistake in the reward model is
    refused before the policy has loaded, not minutes later."""
    section = getattr(recipe, stage, None)
    if section is None:
        return
    named = [(f"{stage}.{key}", getattr(section, key, None)) for key in ("init_from", "policy_from", "reward_from")]
    named += [(f"{stage}.rewards[{i}].model", t.model) for i, t in enumerate(getattr(section, "rewards", None) or [])]
    for what, ref in named:
        kind = expected_kind(what)
        if ref and kind is not None:
            check_model_kind(str(ref), kind, what)


def run_first(layout: RunLayout, step: str, recipe=None) -> str:
    """Every unfinished step up to `step` that the recipe needs, as commands to run: '`rlhf pretrain`, then `rlhf sft`
    (or `rlhf pipeline --stages pretrain,sft`)'. With `recipe`: only its `stages:`, no pretrain when SFT starts from a
    model (`sft.init_from`), no sample/label when the reward model's rankings come from a file or the hub."""
    skip = {"eval", "report", *(set(STEPS) - set(DEFAULT_STEPS))}  # summaries, and methods beside PPO
    if recipe is not None:
        if recipe.stages:
            skip |= set(STEPS) - set(recipe.stages) - {step}
        if recipe.sft.init_from:
            skip.add("pretrain")
        if recipe.reward.data is not None and (recipe.reward.data.path or recipe.reward.data.hub):
            skip |= {"sample", "label"} - {step}
    missing = [s for s in layout.missing_up_to(step) if s not in skip] or [step]
    commands = ", then ".join(f"`rlhf {s}`" for s in missing)
    return commands + (f" (or `rlhf pipeline --stages {','.join(missing)}`)" if len(missing) > 1 else "")


def _looks_local(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or ref.count("/") != 1 or Path(ref).exists()


def newest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest *complete* `checkpoint-N` folder (one with trainer_state.json), not merely the highest number."""
    if not Path(ckpt_dir).is_dir():
        return None
    done = [p for p in Path(ckpt_dir).glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    done.sort(key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    return done[-1] if done else None


def write_lineage(final_dir: Path, *, run_dir: Path, stage: str, parents: dict[str, str], data: Any, recipe) -> None:
    """`lineage.json`: where this model came from, so a later stage can check its inputs; the paths inside `run_dir`
    relative to it (a moved run still reads: `read_lineage`)."""
    lineage = {
        "stage": stage,
        "parents": parents,
        "data": data,
        "recipe_name": recipe.name,
        "recipe_hash": recipe.fingerprint(),
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(Path(final_dir) / "lineage.json", lineage_paths(lineage, lambda p: path_in_run(p, run_dir)))


def read_lineage(model_dir: str | Path) -> dict:
    """A model folder's lineage.json ({} without a readable one), every path it names ready to open: resolved against
    the run the folder is in now, wherever the run was when it was written."""
    try:
        lineage = read_json(Path(model_dir) / "lineage.json")
    except (OSError, ValueError):
        return {}
    run = enclosing_run(model_dir) or Path(model_dir)
    return lineage_paths(lineage, lambda p: resolve_in_run(p, run)) if isinstance(lineage, dict) else {}


DATA_PATHS = ("path", "eval_path")  # the keys of a data spec (recipe.DataSpec) that name local files


def lineage_paths(lineage: dict, convert) -> dict:
    """`lineage` with every path it names (the parent models; the data's files, at any depth) passed through
    `convert`: `path_in_run` to write it, `resolve_in_run` to read it."""

    def data(value):
        if isinstance(value, str):  # a file of the stage's own (expert iteration's filtered answers)
            return convert(value)
        if not isinstance(value, dict):
            return value
        return {k: convert(v) if k in DATA_PATHS and isinstance(v, str) else data(v) for k, v in value.items()}

    out = dict(lineage)
    if isinstance(lineage.get("parents"), dict):
        out["parents"] = {k: convert(v) if isinstance(v, str) else v for k, v in lineage["parents"].items()}
    if "data" in lineage:
        out["data"] = data(lineage["data"])
    return out


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
