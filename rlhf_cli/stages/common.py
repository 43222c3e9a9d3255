"""What every stage shares: the trainer config built from the recipe (defaults < recipe), and the device facts."""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Any

from rlhf_cli.data import load_stage_data, train_eval_split
from rlhf_cli.data.toy import ToyWorld
from rlhf_cli.evaluation.stats import paired_difference_ci
from rlhf_cli.models import sizing
from rlhf_cli.models.answers import score_answers
from rlhf_cli.models.modeling import attention, estimate_parameters, model_dimensions, save_model
from rlhf_cli.recipe import RENAMED_TRAINING_KEYS
from rlhf_cli.runtime import distributed, precision
from rlhf_cli.runtime.callbacks import nan_guard_args
from rlhf_cli.runtime.distributed import is_main_process
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.precision import gpu_available
from rlhf_cli.runtime.runs import write_lineage, write_model_card
from rlhf_cli.runtime.steps import BY_NAME, TRAINING_STAGES, lineage

# TRL's trainers (DPO, GRPO, RLOO) ask every model `is_gradient_checkpointing`, which transformers 5 renamed: noise
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def model_options(recipe) -> dict[str, Any]:
    """How every model of a run loads (modeling.load_causal_lm, scoring.load_reward_model): remote code, attention."""
    return {
        "trust_remote_code": recipe.model.trust_remote_code,
        "attn_implementation": recipe.model.attn_implementation,
    }


def stage_precision(recipe, stage: str, n_params: int | None):
    """The precision the stage trains in, and why: its `training.bf16`, else the recipe's `precision:` rule."""

    return precision.for_training(n_params, recipe.precision, getattr(getattr(recipe, stage), "training", {}))


def announce(recipe, stage: str, n_params: int | None, doing: str = "training") -> dict[str, str]:
    """The stage's first line: the model size and the precision it trains in, and why (main process only); returns
    the precision as eval.json records it."""

    chosen = stage_precision(recipe, stage, n_params)
    if is_main_process():
        size = f"{n_params / 1e6:.2f}M parameters, " if n_params else ""
        print(f"{stage}: {size}{doing} in {chosen}", flush=True)
    return {"precision": chosen.name, "precision_reason": chosen.reason}


def training_kwargs(recipe, stage: str, stage_dir: Path, n_params: int | None = None) -> dict[str, Any]:
    """Keyword arguments for the stage's trainer config: defaults < precision < recipe `training:`."""

    kwargs = {
        **BY_NAME[stage].defaults,
        "bf16": stage_precision(recipe, stage, n_params).bf16,
        "fp16": False,
        # Without it TrainingArguments refuses bf16 on a machine without a GPU ("Your setup doesn't support bf16/gpu"),
        # which is every CPU with AMX: that path never runs on a CPU without fast bf16, so only a forced test sees it.
        "use_cpu": not gpu_available(),
        **({"tf32": True} if precision.has_tf32() else {}),  # fp32 matmuls on tensor cores (Ampere and newer)
        **nan_guard_args(),
        "output_dir": str(Path(stage_dir) / "checkpoints"),
        "seed": recipe.seed,
        "report_to": "none",
        "disable_tqdm": not sys.stderr.isatty(),  # a bar on a terminal; in a log, the stage's own lines only
        "save_strategy": "steps",
        "dataloader_num_workers": 0,
    }
    section = getattr(recipe, stage)
    # `auto` (the text recipe's learning rate and batch) is chosen when pretrain runs (rlhf_cli.models.sizing); a config
    # built before then (--dry-run, rlhf check, recipe show) holds the default in its place.
    kwargs.update({k: v for k, v in section.training.items() if v != "auto"})
    for (
        old,
        new,
    ) in RENAMED_TRAINING_KEYS.items():  # transformers 5 renamed them; the old names still work in a recipe, unwarned
        if old in section.training:
            kwargs[new] = kwargs.pop(old)
    kwargs.update(section.trainer_settings())
    return kwargs


def trainer_config(recipe, stage: str, stage_dir: Path, *, n_params: int | None = None, **extra):
    """Build the stage's trainer config class; a bad value becomes a UserError naming the key.

    `n_params`: the size of the model the stage trains, which the precision rule reads (rlhf_cli.runtime.precision).
    """
    from rlhf_cli.models.trainer_configs import config_class

    cls = config_class(stage)
    kwargs = {**training_kwargs(recipe, stage, stage_dir, n_params), **extra}
    check_report_to(stage, kwargs.get("report_to"))
    try:
        config = cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise UserError(f"{stage}.training: {str(err).splitlines()[0]}") from None
    # Values the config class takes but torch or the Trainer refuse only once training starts, after the stage folder
    # exists (and, with --overwrite, after the old one is gone): checked here, before anything is written.
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        value = getattr(config, name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{stage}.training.{name} is {value!r}; it must be a whole number, 1 or more.")
    for name in ("max_steps", "num_train_epochs", "learning_rate", "warmup_steps", "weight_decay", "max_grad_norm"):
        value = getattr(config, name, 0)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UserError(f"{stage}.training.{name} is {value!r}; it must be a number.")
    if config.learning_rate < 0:  # torch refuses it only when the optimiser is built, after the stage folder exists
        raise UserError(f"{stage}.training.learning_rate is {config.learning_rate}; it must be positive (e.g. 1e-3).")
    steps, epochs = getattr(config, "max_steps", None), getattr(config, "num_train_epochs", None)
    if isinstance(steps, (int, float)) and steps <= 0 and isinstance(epochs, (int, float)) and epochs <= 0:
        raise UserError(  # the Trainer would train no step and the stage save its starting model as trained
            f"{stage}.training: max_steps is {steps} and num_train_epochs {epochs}, so nothing would train; set "
            "max_steps (or num_train_epochs) to 1 or more."
        )
    return config


def check_report_to(stage: str, report_to) -> None:
    """A logging integration named in `training.report_to` must be installed: a UserError now, not a traceback later."""
    import importlib

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        if name in ("none", "all"):
            continue
        module = {
            "tensorboard": "tensorboard",
            "wandb": "wandb",
            "trackio": "trackio",
            "mlflow": "mlflow",
            "comet_ml": "comet_ml",
            "clearml": "clearml",
            "swanlab": "swanlab",
        }.get(name)
        found = module is None or any(
            importlib.util.find_spec(m) is not None
            for m in ([module, "tensorboardX"] if module == "tensorboard" else [module])
        )
        if not found:
            extra = "rlhf-cli[tensorboard]" if name == "tensorboard" else name
            raise UserError(
                f"{stage}.training.report_to names '{name}', which is not installed: pip install '{extra}', or drop it "
                f"(the metrics still land in {stage}/metrics.jsonl)."
            )


def planned_parameters(recipe, stage: str) -> int | None:
    """The size of the model `stage` will train when it descends from this run's fresh model (None: it loads a model
    named by the recipe, whose size is known only once it loads)."""

    def starts_elsewhere(step: str) -> bool:
        key = BY_NAME[step].starts_from
        section, name = key.split(".") if key else (step, "")
        return bool(key) and bool(getattr(getattr(recipe, section), name))

    if recipe.tokenizer.from_ or any(starts_elsewhere(s) for s in lineage(stage)):
        return None
    if sizing.auto_keys(recipe):  # a model sized when pretrain runs
        return None
    return estimate_parameters(recipe.model, recipe.tokenizer.train.vocab_size)


def build_trainer_configs(recipe, run_dir: Path, stages=TRAINING_STAGES) -> dict[str, Any]:
    """The trainer config of each training stage among `stages`, built without training (`--dry-run`, `rlhf check`)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return {
            stage: trainer_config(recipe, stage, Path(tmp) / stage, n_params=planned_parameters(recipe, stage))
            for stage in TRAINING_STAGES
            if stage in stages
        }


def resolved_settings(recipe) -> dict[str, tuple[Any, str]]:
    """{key.path: (value, where it comes from)} for the recipe's settings that are None or `auto` and that the stages
    resolve when they run (`rlhf recipe show`), each by the stages' own function: a stage's algorithm keys left to its
    trainer config's default (build_trainer_configs), a fresh model's dimensions (model_dimensions), the precision
    and attention rules on this machine."""
    out: dict[str, tuple[Any, str]] = {}
    unset = {
        stage: [k for k in getattr(recipe, stage).TRAINER_KEYS if getattr(getattr(recipe, stage), k) is None]
        for stage in TRAINING_STAGES
    }
    configs = build_trainer_configs(recipe, Path("."), [s for s, keys in unset.items() if keys])
    for stage, config in configs.items():
        meaning = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(config)}
        for key in unset[stage]:
            value = getattr(config, key)
            said = f": {meaning[key]}" if value is None and meaning.get(key) else ""  # what None means there
            out[f"{stage}.{key}"] = (value, f"{type(config).__name__}'s default{said}")
    if planned_parameters(recipe, "pretrain") is not None:  # a fresh model, not one loaded from init_from
        for key, value in model_dimensions(recipe.model).items():
            if getattr(recipe.model, key) is None:
                out[f"model.{key}"] = (value, f"size {recipe.model.size}")
    for key in sizing.auto_keys(recipe):
        out[key] = ("auto", "chosen by pretrain from the text and its budget, printed in its first lines (sizing)")
    if recipe.precision == "auto":
        out["precision"] = ("auto", f"on this machine: {precision.rule_here()}")
    if recipe.model.attn_implementation == "auto":
        out["model.attn_implementation"] = ("auto", f"on this machine: {attention('auto')}")
    return out


# ------------------------------------------------------------------------------------------------------ methods


def method_prompts(recipe, layout, stage: str):
    """A method's prompts, as PPO's: (training prompts, held-out prompts to judge it on) from `<stage>.data` (else
    `ppo.data`), the first `<stage>.eval_prompts` held-out ones, so every method answers the same ones; and whether
    the toy world judges them."""
    spec = getattr(getattr(recipe, stage), "data", None) or recipe.ppo.data
    data = load_stage_data("ppo", spec, toy_dir=layout.toy, seed=recipe.seed)
    train, held = train_eval_split(data, spec, "ppo", seed=recipe.seed, toy_dir=layout.toy)
    n = min(getattr(recipe, stage).eval_prompts, len(held))
    return train, [list(p) for p in held.select(range(n))["prompt"]], spec.toy


def policy_vs_sft(recipe, stage: str, own: tuple[dict, list], reference, tokenizer, prompts, world) -> dict:
    """A method's answers (`own`: answers.answer_metrics of them) next to the SFT model's greedy answers to the same
    held-out prompts: both metric sets, on the toy world the gold gain with a paired 95 % bootstrap interval, and
    five examples side by side. Main process only."""
    own_metrics, own_rows = own
    sft_metrics, sft_rows = score_answers(recipe, reference, tokenizer, prompts, world)
    metrics = {"eval_prompts": len(prompts), stage: own_metrics, "sft": sft_metrics}
    if world is not None:
        gain = paired_difference_ci([g for *_, g in own_rows], [g for *_, g in sft_rows], seed=recipe.seed)
        metrics["gold_gain"] = {k: round(v, 6) if k != "n" else v for k, v in gain.items()}
    metrics["examples"] = [
        {"prompt": p, "sft": s.text, stage: d.text}
        for (p, s, _), (_, d, _) in zip(sft_rows[:5], own_rows[:5], strict=True)
    ]
    return metrics


def gather_weights(trainer) -> dict | None:
    """Every process (a collective under ZeRO-3 and FSDP): the trained model's whole state dict when each process holds
    a shard of it — on the main process; None where the model in memory is whole (one process, DDP, ZeRO-1/2)."""
    if not distributed.sharded(trainer.accelerator):
        return None
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)


def save_policy(
    tmp: Path,
    run_dir: Path,
    model,
    tokenizer,
    recipe,
    stage: str,
    parents: dict,
    data,
    title: str,
    body: str,
    source: str,
    state_dict: dict | None = None,
) -> None:
    """A method's final folder: the policy (a plain causal LM, in the dtype `model.save_dtype` picks against `source`,
    the checkpoint it started from; `state_dict`: its gathered weights when it trained sharded), its tokenizer,
    lineage.json and a model card."""
    saved = save_model(model, tmp, source=source, setting=recipe.model.save_dtype, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    write_lineage(tmp, run_dir=run_dir, stage=stage, parents=parents, data=data, recipe=recipe)
    write_model_card(tmp, title=f"{recipe.name}: {title}", body=f"{body}\n\n{saved}")


def toy_world(recipe, toy: bool) -> ToyWorld | None:
    return ToyWorld(recipe.seed) if toy else None


def method_summary(stage: str, final: Path, m: dict, trained: str) -> None:
    """A method's last line: what it trained on and, on the toy world, its gold reward against SFT's."""
    gold = ""
    if "gold_gain" in m:
        g = m["gold_gain"]
        gold = (
            f"; gold reward {m[stage]['gold_reward']:+.3f} (SFT {m['sft']['gold_reward']:+.3f}, gain {g['mean']:+.3f} "
            f"[{g['low']:+.3f}, {g['high']:+.3f}]), right facts {m[stage]['right_fact_rate']:.0%}"
        )
    print(f"{stage}: saved {final} — {trained}{gold}")
