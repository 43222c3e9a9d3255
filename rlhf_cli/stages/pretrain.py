"""Stage 1: generative pre-training — a causal Transformer learns next-token prediction on raw text (the base model).

    rlhf pretrain --recipe tiny
    rlhf pretrain --recipe text --set pretrain.data.path=novel.txt --set pretrain.training.max_time=60

Tokenizer (trained on the corpus or loaded) -> model (preset, explicit dimensions, or `init_from`) -> documents tokenised
once (cached by `datasets`) and packed into `block_size` blocks with end-of-text between documents -> transformers' Trainer
-> held-out loss, perplexity, bits per byte, tokens/s, MFU (and on the toy world the completion probes) in `pretrain/eval.json`.

A `.txt` file trains as the text it is, blank lines included (`data.paragraphs: true` splits it into documents); the
held-out tail is scored as written. With `training.max_time` the learning-rate schedule runs on the clock and ends
with the budget (`TimeBudget`); the `text` recipe is set up for "my text, N seconds".
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback

from rlhf_cli.data import load_stage_data, train_eval_split
from rlhf_cli.evaluation.lm_eval import evaluate_lm, matmul_parameters, probe_accuracy
from rlhf_cli.models import sizing
from rlhf_cli.models.modeling import (
    build_model,
    count_parameters,
    flops_per_token,
    load_causal_lm,
    load_tokenizer,
    measure_matmul_peak,
    save_model,
    stop_at_end_of_turn,
    train_tokenizer,
)
from rlhf_cli.models.trainer_configs import PretrainArguments  # noqa: F401 - where checkpoints' pickled training args find it
from rlhf_cli.runtime import callbacks, distributed, runs
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.stages.common import model_options, trainer_config
from rlhf_cli.stages.driver import Job, stage_runner

STAGE = "pretrain"
TOKENIZER_TEXTS = 200_000  # documents the tokenizer is trained on (the head of a big corpus is enough)
EVAL_TOKENS = 131_072  # held-out tokens scored at most (the held-out tenth of a 1 MB novel is ~35k)
UNTRAINED_BLOCKS = 8  # blocks the freshly initialised model is scored on, for comparison


def setup(ctx) -> Job:
    """Tokenizer, model and packed blocks, every input checked; the driver (rlhf_cli.stages.driver) does the rest."""
    from accelerate import PartialState
    from transformers import Trainer

    recipe, spec, stage_dir = ctx.recipe, ctx.recipe.pretrain, ctx.stage_dir
    toy_dir = ctx.layout.toy if spec.data.toy else None
    with PartialState().main_process_first():
        train_docs = load_stage_data(STAGE, spec.data, toy_dir=toy_dir, seed=recipe.seed)
        train_docs, eval_docs = train_eval_split(train_docs, spec.data, STAGE, seed=recipe.seed, toy_dir=toy_dir)
        if len(eval_docs) == 0:
            raise UserError(
                "pretrain has no held-out text to measure bits per byte on: set pretrain.data.eval_fraction above 0 "
                "(e.g. 0.05) or pretrain.data.eval_path to a held-out file."
            )
        if not sizing.auto_keys(recipe):
            (tokenizer, trained), plan = _tokenizer(recipe, stage_dir, train_docs, ctx.resume), None
    if sizing.auto_keys(recipe):  # every process together: the main one plans, the others take its plan
        recipe, tokenizer, trained, plan = _plan(recipe, stage_dir, train_docs, ctx.resume)
        spec = recipe.pretrain

    # The model: continue pre-training a pretrained one, or a fresh one from the preset / explicit dimensions.
    if spec.init_from:  # fp32 master weights whatever the checkpoint was saved in
        model = load_causal_lm(spec.init_from, **model_options(recipe))
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        stop_at_end_of_turn(model, tokenizer)
    else:
        model = build_model(recipe.model, tokenizer, seed=recipe.seed)
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if context and spec.block_size > context:
        raise UserError(
            f"pretrain.block_size {spec.block_size} exceeds the model's context of {context} tokens; lower it."
        )

    # Tokenise once (datasets caches the map; the main process goes first so the others read its cache), then pack.
    with PartialState().main_process_first():
        train_blocks = pack(train_docs, tokenizer, spec.block_size)
        eval_blocks = pack(eval_docs, tokenizer, spec.block_size, keep_remainder=True)
    if hasattr(train_blocks, "__len__") and len(train_blocks) == 0:
        raise UserError(
            f"The pretrain corpus holds fewer than block_size={spec.block_size} tokens; lower pretrain.block_size."
        )

    n_params = count_parameters(model)
    args = trainer_config(
        recipe, STAGE, stage_dir, n_params=n_params, **({"torch_compile": True} if spec.compile else {})
    )
    n_eval = min(max(1, EVAL_TOKENS // spec.block_size), len(eval_blocks))
    eval_ids = [list(r) for r in eval_blocks.select(range(n_eval))["input_ids"]]
    model.to(args.device)  # the Trainer would move it anyway; the untrained baseline is scored where training runs
    untrained = evaluate_lm(model, tokenizer, eval_ids[:UNTRAINED_BLOCKS]) if not spec.init_from else None
    callback = callbacks.make_callbacks(stage_dir, STAGE)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_blocks,
        data_collator=collate_blocks,
        eval_dataset=eval_blocks.select(range(len(eval_ids))),
        callbacks=[callback, TimeBudget(args.max_time)],
    )

    def keep_tokenizer():  # kept for --resume: a resumed run must not train a different tokenizer, or plan again
        if trained:
            tokenizer.save_pretrained(stage_dir / "tokenizer")
        if plan is not None:
            plan.save(stage_dir / "plan.json")

    def evaluate(output, checkpoint) -> dict:
        """Held-out loss, perplexity, bits per byte; speed and MFU of the training just done; the toy world's probes."""

        trained_model = trainer.accelerator.unwrap_model(trainer.model)
        metrics = evaluate_lm(trained_model, tokenizer, eval_ids)
        tokens_per_step = (
            args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size * spec.block_size
        )
        runtime = output.metrics.get("train_runtime") or float("nan")
        overall_tokens_per_s = (trainer.state.global_step - _step_of(checkpoint)) * tokens_per_step / runtime
        # Speed and MFU are the steady state: the first steps hold torch.compile's tracing and warm-up, which can take
        # longer than a short run's training (GPT-2 124M on an H100: 90 s of 108).
        per_step = callbacks.steady_seconds_per_step(callback.step_ends)
        tokens_per_s = tokens_per_step / per_step if per_step else overall_tokens_per_s
        dtype = "bfloat16" if args.bf16 else "float16" if args.fp16 else "float32"
        peak = measure_matmul_peak(dtype)
        flops = flops_per_token(trained_model.config, matmul_parameters(trained_model), spec.block_size)
        metrics.update(
            {
                "untrained_bits_per_byte": untrained["bits_per_byte"] if untrained else None,
                "train_loss": output.metrics.get("train_loss"),
                "global_step": trainer.state.global_step,
                "train_runtime_s": runtime,
                "tokens_per_s": tokens_per_s,
                "tokens_per_s_overall": overall_tokens_per_s,
                "flops_per_token": flops,
                "mfu": tokens_per_s * flops / args.world_size / peak,
                "matmul_peak_flops": peak,
                "dtype": dtype,
                "parameters": sum(p.numel() for p in trained_model.parameters()),
                "block_size": spec.block_size,
            }
        )
        if plan is not None:
            metrics["plan"] = dataclasses.asdict(plan)
        if spec.data.toy and spec.probes:
            metrics["probe_accuracy"] = probe_accuracy(trained_model, tokenizer, toy_dir / "probes_eval.jsonl")
        return metrics

    def write_final(tmp: Path, metrics: dict, _staging) -> None:
        model = trainer.accelerator.unwrap_model(trainer.model)
        saved = save_model(model, tmp, source=spec.init_from, setting=recipe.model.save_dtype)
        tokenizer.save_pretrained(tmp)
        parents = {"model": spec.init_from or "scratch"}
        runs.write_lineage(
            tmp, run_dir=ctx.layout.root, stage=STAGE, parents=parents, data=spec.data.model_dump(), recipe=recipe
        )
        body = f"{_card(recipe, metrics)}\n\n{saved}"
        runs.write_model_card(tmp, title=f"{recipe.name}: base model (rlhf pretrain)", body=body)

    return Job(trainer, n_params, evaluate, write_final, _summary, prepared=keep_tokenizer)


run = stage_runner(STAGE, setup)


def _summary(final: Path, m: dict) -> None:
    probes = f", probes {m['probe_accuracy']:.0%}" if "probe_accuracy" in m else ""
    print(
        f"Base model saved to {final}\n  held-out loss {m['loss']:.3f}, bits/byte {m['bits_per_byte']:.3f}"
        f" (untrained {m['untrained_bits_per_byte'] or float('nan'):.3f}){probes}, {m['tokens_per_s']:,.0f} tokens/s,"
        f" MFU {m['mfu']:.1%} of a measured {m['matmul_peak_flops'] / 1e9:.0f} GFLOP/s {m['dtype']} peak"
    )


# ------------------------------------------------------------------------------------------------------ tokenizer, data


def _plan(recipe, stage_dir: Path, train_docs, resume: bool):
    """(the recipe with its `auto` settings chosen, the tokenizer, trained here?): rlhf_cli.models.sizing chooses them
    from the text and the budget and prints why; a resumed run reads the plan it made (pretrain/plan.json)."""
    saved, trained = stage_dir / "plan.json", []

    def tokenizer_for(vocab_size):
        chosen = recipe if vocab_size is None else sizing.apply(recipe, sizing.Plan(vocab_size=vocab_size))
        tokenizer, was_trained = _tokenizer(chosen, stage_dir, train_docs, resume)
        trained.append(was_trained)
        return tokenizer

    width = None
    if recipe.pretrain.init_from:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(recipe.pretrain.init_from, trust_remote_code=recipe.model.trust_remote_code)
        width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    plan = tokenizer = None
    if resume and saved.exists():
        plan = sizing.Plan.load(saved)
    elif distributed.is_main_process():  # the main process plans (it probes this machine); the others take its plan
        plan, tokenizer = sizing.plan(recipe, train_docs, tokenizer_for, model_width=width)
    plan = distributed.from_main_process(plan)
    if distributed.is_main_process():
        kept = " (the plan this run made before)" if resume and saved.exists() else ""
        for line in sizing.describe(plan):
            print(f"pretrain: {line}{kept}", flush=True)
    tokenizer = tokenizer or tokenizer_for(plan.vocab_size)
    return sizing.apply(recipe, plan), tokenizer, trained[-1], plan


def _tokenizer(recipe, stage_dir: Path, train_docs, resume: bool):
    """(tokenizer, trained here?): `tokenizer.from`, else init_from's, else on --resume the one this stage saved, else one
    trained on the corpus (the caller saves it in the stage folder once the inputs are validated)."""

    ref = recipe.tokenizer.from_ or recipe.pretrain.init_from
    if ref:
        return load_tokenizer(ref, trust_remote_code=recipe.model.trust_remote_code), False
    saved = stage_dir / "tokenizer"
    if resume and (saved / "tokenizer.json").exists():
        return load_tokenizer(str(saved)), False
    texts = (row["text"] for _, row in zip(range(TOKENIZER_TEXTS), train_docs, strict=False))
    return train_tokenizer(texts, recipe.tokenizer.train.vocab_size, recipe.tokenizer.train.min_frequency), True


def pack(docs, tokenizer, block_size: int, keep_remainder: bool = False):
    """Tokenise documents and pack them into `block_size` blocks, end-of-text after each document (datasets caches it).

    The tail that does not fill a block is dropped per batch of documents; `keep_remainder` keeps it as a short block.
    """
    eos = tokenizer.eos_token_id

    def blocks(batch):
        flat = []
        for ids in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]:
            flat += ids
            flat.append(eos)
        end = len(flat) if keep_remainder else len(flat) // block_size * block_size
        return {"input_ids": [flat[i : i + block_size] for i in range(0, end, block_size)]}

    kwargs = {} if not hasattr(docs, "cache_files") else {"desc": "Tokenising and packing"}
    return docs.map(blocks, batched=True, batch_size=2000, remove_columns=["text"], **kwargs)


def collate_blocks(rows):
    """Packed blocks: no attention mask (SDPA takes its causal fast path).

    Training blocks are all full; the held-out set keeps each tail as a short block, which is right-padded here with
    labels -100 - under causal attention padding after the last real token changes nothing before it.
    """
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    if all(len(r["input_ids"]) == width for r in rows):  # every training batch: one tensor, no copies
        ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
        return {"input_ids": ids, "labels": ids}
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = labels[i, :n] = torch.tensor(r["input_ids"], dtype=torch.long)
    return {"input_ids": ids, "labels": labels}


# ------------------------------------------------------------------------------------------------------ helpers


def _step_of(checkpoint) -> int:
    return int(Path(checkpoint).name.split("-")[-1]) if checkpoint else 0


class TimeBudget(TrainerCallback):
    """Stop at the end of the step that passes `max_time` seconds of training; the stage then evaluates and saves.

    With `max_time` the learning-rate schedule runs on the clock: its progress is the larger of the time used and the
    steps done (of `max_steps`), so a cosine decay ends when the budget does, however fast the machine (a fixed compute
    budget is the common case on a laptop). Warm-up stays in steps.
    """

    FILE = "time_budget.json"  # in each checkpoint: the training seconds used so far

    def __init__(self, max_time: float | None):
        self.max_time, self.start = max_time, time.time()

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kw):
        # A resumed run continues the clock where its checkpoint stopped it (the budget is for the whole run).
        saved = Path(args.output_dir) / f"checkpoint-{state.global_step}" / self.FILE
        used = float(json.loads(saved.read_text())["seconds"]) if state.global_step and saved.exists() else 0.0
        self.start = time.time() - used
        scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate may wrap it
        if self.max_time and args.lr_scheduler_type in ("cosine", "linear") and hasattr(scheduler, "lr_lambdas"):
            warmup = args.get_warmup_steps(state.max_steps)
            shape = _cosine if args.lr_scheduler_type == "cosine" else _linear
            factor = lambda step: self._factor(step, state.max_steps, warmup, shape)  # noqa: E731
            scheduler.lr_lambdas = [factor] * len(scheduler.lr_lambdas)  # one per parameter group

    def _factor(self, step: int, max_steps: int, warmup: int, shape) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = max((time.time() - self.start) / self.max_time, step / max(1, max_steps))
        return shape(min(1.0, progress))

    def on_save(self, args, state, control, **kw):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            (folder / self.FILE).write_text(json.dumps({"seconds": time.time() - self.start}))

    def on_step_end(self, args, state, control, **kw):
        if self.max_time and time.time() - self.start > self.max_time:
            control.should_training_stop = True
            control.should_save = True
        return control


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _linear(progress: float) -> float:
    return 1.0 - progress


def _card(recipe, m: dict) -> str:
    lines = [
        f"A base model pre-trained by `rlhf pretrain` (recipe `{recipe.name}`, {m['parameters']:,} parameters, "
        f"{m['global_step']} steps of {m['block_size']}-token blocks).",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in (
        "loss",
        "perplexity",
        "bits_per_byte",
        "untrained_bits_per_byte",
        "probe_accuracy",
        "tokens_per_s",
        "mfu",
    ):
        if m.get(key) is not None:
            lines.append(f"| {key} | {m[key]:.4g} |")
    lines += [
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained(PATH); model = AutoModelForCausalLM.from_pretrained(PATH)",
        "```",
    ]
    return "\n".join(lines)
