"""Stage 2: supervised fine-tuning — the base model learns to answer in a conversation (TRL's SFTTrainer).

    rlhf sft --recipe tiny                              # after `rlhf pretrain --recipe tiny`
    rlhf sft --recipe tiny --set sft.lora.r=8           # a LoRA adapter, merged into sft/final
    rlhf sft --recipe tiny --set sft.init_from=path/to/any/causal-lm --set sft.data.path=chats.jsonl

Starts from this run's `pretrain/final` (or `sft.init_from`), trains on any SFT format of the data layer with the loss on
assistant tokens only (the project's chat template marks them with `{% generation %}`), and writes `sft/final`,
`sft/metrics.jsonl` and `sft/eval.json`: held-out loss, the share of greedy answers to held-out prompts that are finished
(end with end-of-text) and well-formed, and on the toy world the mean gold reward of the SFT model and of the base model.
"""

from __future__ import annotations

from pathlib import Path

from rlhf_cli.data import load_stage_data, train_eval_split
from rlhf_cli.data.toy import ToyWorld
from rlhf_cli.data.toy import held_out_prompts as toy_held_out_prompts
from rlhf_cli.models.answers import print_samples, score_answers
from rlhf_cli.models.modeling import (
    check_qlora,
    check_trainable_template,
    count_parameters,
    frozen_base_in_bf16,
    load_causal_lm,
    load_tokenizer,
    load_trainable_causal_lm,
    lora_config,
    merged,
    resize_for_tokenizer,
    save_model,
    stop_at_end_of_turn,
)
from rlhf_cli.runtime import callbacks, distributed, runs
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.layout import path_in_run
from rlhf_cli.stages.common import gather_weights, trainer_config
from rlhf_cli.stages.driver import Job, stage_runner

STAGE = "sft"
SAMPLES_SHOWN = 5


def setup(ctx) -> Job:
    """Model, tokenizer, conversations and SFTTrainer, every input checked; the driver (rlhf_cli.stages.driver) does
    the rest: `sft/final`, `sft/eval.json`."""
    import datasets
    import torch
    from accelerate import PartialState
    from transformers import set_seed

    recipe, spec, stage_dir = ctx.recipe, ctx.recipe.sft, ctx.stage_dir
    if spec.lora is not None and spec.lora.qlora:
        check_qlora()
    init = runs.resolve_model_dir(spec.init_from, ctx.layout.root, "pretrain", "sft.init_from", recipe=recipe)
    trust = recipe.model.trust_remote_code

    # Model and tokenizer: a tokenizer without a chat template gets the project's (new tokens need new embeddings).
    tokenizer = load_tokenizer(init, trust_remote_code=trust)
    if spec.assistant_only_loss:
        check_trainable_template(tokenizer, init, STAGE)
    set_seed(recipe.seed)  # a fresh head or resized embeddings start the same in every run of this seed
    model = load_trainable_causal_lm(init, spec, trust, tokenizer, recipe.model.attn_implementation)
    added = resize_for_tokenizer(model, tokenizer)

    # Data: any SFT format, normalised to {"messages"}; the toy world's files live in the run folder.
    toy_dir = ctx.layout.toy
    with PartialState().main_process_first():  # one process prepares and caches the data, the others read it
        data = load_stage_data(STAGE, spec.data, toy_dir=toy_dir, seed=recipe.seed)
        train_ds, eval_ds = train_eval_split(data, spec.data, STAGE, seed=recipe.seed, toy_dir=toy_dir)
        truncated, counted = count_truncated(tokenizer, train_ds, spec.max_length)
    if truncated:
        print(
            f"sft: {truncated} of {counted} training conversations are longer than max_length={spec.max_length} "
            "tokens and will be cut (raise sft.max_length to keep them whole)."
        )

    trainer = make_trainer(
        recipe,
        stage_dir,
        model,
        tokenizer,
        train_ds,
        eval_ds,
        added,
        [callbacks.make_callbacks(stage_dir, STAGE)],
        init,
    )
    if isinstance(trainer.train_dataset, datasets.Dataset) and len(trainer.train_dataset) == 0:
        # TRL drops conversations whose assistant turns truncation cut off entirely; torch would fail on an empty set
        raise UserError(
            f"sft: no training conversation keeps an assistant token within sft.max_length={spec.max_length} tokens "
            "(the turns before the answers are longer); raise sft.max_length or shorten the conversations."
        )
    trained = {}  # the model to save: LoRA merged into a plain model unless the recipe keeps the adapter separate

    def evaluate(result, _checkpoint) -> dict:
        metrics = {
            "train_loss": result.training_loss,
            "train_steps": result.global_step,
            "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 2),
            "truncated_examples": truncated,
            "train_examples": counted,
        }
        if len(eval_ds):
            metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
        model = trainer.model
        trained["model"] = merged(model) if spec.lora is not None and spec.lora.merge else model
        # Held-out answers on every process (generation is collective when the model is sharded); the main one
        # writes eval.json and prints.
        with distributed.whole_model(trainer.model_wrapped, trainer.accelerator), torch.no_grad():
            trained["model"].eval()
            metrics.update(evaluate_answers(recipe, trained["model"], tokenizer, eval_ds, toy_dir, init, trust))
        metrics["model_dir"] = path_in_run(ctx.layout.final(STAGE), ctx.layout.root)
        return metrics

    def export(_staging) -> None:
        trained["state"] = gather_weights(trainer)

    def write_final(tmp: Path, metrics: dict, _staging) -> None:
        write_model_folder(
            tmp, ctx.layout.root, trained["model"], tokenizer, recipe, init, spec, metrics, trained.get("state")
        )

    return Job(trainer, count_parameters(model), evaluate, write_final, print_summary, export=export)


run = stage_runner(STAGE, setup)


# ------------------------------------------------------------------------------------------------------ model set-up


def make_trainer(
    recipe, stage_dir: Path, model, tokenizer, train_ds, eval_ds, added_tokens=(), callbacks=(), init: str | None = None
):
    """TRL's SFTTrainer with the recipe's SFTConfig: assistant-only loss, max_length, packing, optimiser, LoRA."""
    from trl import SFTTrainer

    spec = recipe.sft
    n_params = count_parameters(model)
    config = trainer_config(
        recipe,
        STAGE,
        stage_dir,
        n_params=n_params,
        max_length=spec.max_length,
        assistant_only_loss=spec.assistant_only_loss,
        packing=spec.packing,
    )
    if spec.packing:
        one_packed_row_per_micro_batch(config, model)
    if spec.lora is not None and not spec.lora.qlora and config.bf16:
        frozen_base_in_bf16(model, init)
    return SFTTrainer(
        model=model,
        args=config,
        train_dataset=train_ds,
        eval_dataset=eval_ds if eval_ds is not None and len(eval_ds) else None,
        processing_class=tokenizer,
        peft_config=lora_config(spec.lora, list(added_tokens)),
        callbacks=list(callbacks),
    )


def one_packed_row_per_micro_batch(config, model) -> None:
    """With packing and no varlen attention kernel: one packed row per micro-batch, accumulated to the same step.

    TRL packs padding-free: a batch's rows are flattened into one sequence, told apart by position_ids. Flash attention's
    varlen kernels keep that linear in the rows; sdpa and eager (every CPU) attend over the whole flattened batch under a
    block-diagonal mask, (rows x max_length)^2 work, slower than padded batches (bench/sft.py measured 0.55x).
    """
    attention = str(getattr(model.config, "_attn_implementation", "") or "")
    if "flash" in attention or config.per_device_train_batch_size == 1:
        return
    config.gradient_accumulation_steps *= config.per_device_train_batch_size
    config.per_device_train_batch_size = 1
    config.per_device_eval_batch_size = 1


def count_truncated(tokenizer, dataset, max_length: int) -> tuple[int, int]:
    """(conversations longer than max_length tokens, conversations counted), rendered with the chat template.

    A streamed data set is not read ahead of training: (0, 0).
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        return 0, 0
    lengths = dataset.map(
        lambda row: {
            "n": len(tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"])
        },
        remove_columns=dataset.column_names,
        desc="Counting tokens",
    )["n"]
    return sum(n > max_length for n in lengths), len(lengths)


def write_model_folder(
    tmp: Path, run_dir: Path, model, tokenizer, recipe, init: str, spec, metrics: dict, state=None
) -> None:
    """`sft/final`: the model (or the LoRA adapter), the tokenizer with its chat template, lineage and a model card."""
    adapter = spec.lora is not None and not spec.lora.merge
    if adapter:  # the adapter must find its base model from any working directory
        model.peft_config["default"].base_model_name_or_path = (
            str(Path(init).resolve()) if Path(init).exists() else init
        )
    if adapter:
        model.save_pretrained(tmp)
        saved = "A LoRA adapter, saved in float32."
    else:
        saved = save_model(model, tmp, source=init, setting=recipe.model.save_dtype, state_dict=state)
    tokenizer.save_pretrained(tmp)
    runs.write_lineage(
        tmp, run_dir=run_dir, stage=STAGE, parents={"base": init}, data=spec.data.model_dump(), recipe=recipe
    )
    kind = "a LoRA adapter (load with peft's AutoPeftModelForCausalLM)" if adapter else "a causal language model"
    body = (
        f"Supervised fine-tuning of `{path_in_run(init, run_dir)}` by `rlhf sft` (recipe `{recipe.name}`): {kind}.\n\n"
        f"Trained {metrics['train_steps']} steps; final training loss {metrics['train_loss']:.4f}"
        + (f", held-out loss {metrics['eval_loss']:.4f}." if "eval_loss" in metrics else ".")
        + "\n\nPrompts use the saved chat template (`tokenizer.apply_chat_template`); generation stops at the end of "
        + "the assistant's turn (generation_config.json).\n\n"
        + saved
    )
    runs.write_model_card(tmp, title=f"{recipe.name} — SFT model", body=body)


# ------------------------------------------------------------------------------------------------------ evaluation


def held_out_prompts(recipe, eval_ds, toy_dir: Path) -> list[list[dict]]:
    """Up to `sft.eval_prompts` prompts: the toy world's held-out prompts, else the history before each eval answer."""
    n = recipe.sft.eval_prompts
    if recipe.sft.data.toy:
        return toy_held_out_prompts(toy_dir, recipe.seed, n)
    prompts = []
    for row in eval_ds.select(range(min(n, len(eval_ds)))):
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        if last > 0:
            prompts.append(messages[:last])
    return prompts


def evaluate_answers(recipe, model, tokenizer, eval_ds, toy_dir: Path, init: str, trust: bool) -> dict:
    """Answer metrics for the SFT model and, on the toy world, the base model's gold reward on the same prompts."""

    prompts = held_out_prompts(recipe, eval_ds, toy_dir)
    if not prompts:
        return {}
    world = None
    if recipe.sft.data.toy:
        world = ToyWorld(recipe.seed)
    sft_metrics, samples = score_answers(recipe, model, tokenizer, prompts, world)
    out = {"eval_prompts": len(prompts), **sft_metrics}
    if world is not None:
        base_tok = load_tokenizer(init, trust_remote_code=trust)
        base = load_causal_lm(init, trust_remote_code=trust, attn_implementation=recipe.model.attn_implementation)
        resize_for_tokenizer(base, base_tok)
        stop_at_end_of_turn(base, base_tok)
        base_metrics, _ = score_answers(recipe, base, base_tok, prompts, world)
        out.update({f"base_{k}": v for k, v in base_metrics.items()})
        out["gold_reward_gain"] = out["gold_reward"] - out["base_gold_reward"]
    if distributed.is_main_process():
        print_samples(samples[:SAMPLES_SHOWN])
    return out


def print_summary(final: Path, m: dict) -> None:
    parts = [f"train loss {m['train_loss']:.3f}"]
    if "eval_loss" in m:
        parts.append(f"held-out loss {m['eval_loss']:.3f}")
    if "finished_rate" in m:
        parts.append(f"finished {m['finished_rate']:.0%}, well-formed {m['well_formed_rate']:.0%}")
    if "gold_reward" in m:
        parts.append(f"gold reward {m['gold_reward']:+.3f} (base {m['base_gold_reward']:+.3f})")
    print(f"sft: saved {final} — " + "; ".join(parts))
