"""Stage 3a: a reward model that scores answers the way the rankings do (TRL's RewardTrainer, InstructGPT's K-wise loss).

    rlhf sample --recipe tiny && rlhf label --recipe tiny && rlhf reward --recipe tiny
    rlhf reward inspect runs/tiny/reward/final          # accuracy with a 95 % interval, length bias, score spread

The model is the SFT model with a scalar head (`AutoModelForSequenceClassification`, num_labels=1; `reward.init_from`
starts elsewhere). It scores a conversation rendered with the chat template, the whole answer including its end-of-text;
the score is read at the last token. Data: any reward format of the data layer (`reward.data`; default this run's
feedback/rankings.jsonl), split by prompt so one prompt's pairs never straddle train and eval.

Loss. With `reward.kwise: true` (default) and data where prompts have several comparisons (rankings), one batch element
is one prompt: its distinct answers are scored once and the loss is the mean of -log σ(r_better - r_worse) over all its
K(K-1)/2 comparisons (InstructGPT, Ouyang et al. 2022, eq. 1) — K forward passes per prompt instead of K(K-1), and
no overfitting from seeing one answer in many separate pairs. Otherwise the ordinary pairwise path of RewardTrainer.
`reward.margin: true` subtracts the data's margin (score differences) inside the sigmoid. `center_rewards_coefficient`
and every other RewardConfig setting come from `reward.training`.

Writes reward/final/ (model, tokenizer, reward_stats.json: score mean/std over the training answers, for PPO to
normalise with), reward/eval.json (held-out pairwise accuracy, mean margin; the accuracy on up to 1024 training pairs,
which tells underfitting (both low) from overfitting (training far above held-out); on the toy world the agreement with
the gold reward's order on the held-out prompts' sampled answers), reward/metrics.jsonl, reward/checkpoints/.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from rlhf_cli.errors import UserError

STATS_ANSWERS = 1024  # training answers scored for reward_stats.json
# Training pairs scored for train_accuracy: next to the held-out accuracy it tells underfitting from overfitting.
FIT_PAIRS = 1024
FEW_PROMPTS = 100  # ranked prompts under which the stage warns that the reward model can learn little
LENGTH_ALARM = 0.5  # |correlation(score, answer length)| at which inspect warns of length hacking


# ------------------------------------------------------------------------------------------------------ rendering, scoring


def encode(tokenizer, prompt: list[dict], answer: str, max_length: int | None = None) -> list[int]:
    """Token ids of prompt + answer through the chat template (answer's end-of-text included), kept from the right."""
    messages = [*prompt, {"role": "assistant", "content": answer}]
    ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    return ids[-max_length:] if max_length else ids  # the score is read at the end; cut the oldest context


def score(
    model,
    tokenizer,
    prompts: list[list[dict]],
    answers: list[str],
    *,
    max_length: int | None = None,
    batch_size: int = 64,
    precision: str = "auto",
) -> list[float]:
    """The reward model's score of each (prompt, answer), batched (longest first, right padding); `precision` is the
    recipe's setting (rlhf_cli.precision)."""
    import torch
    from trl.trainer.utils import pad

    from rlhf_cli import precision as precisions

    rows = [encode(tokenizer, p, a, max_length) for p, a in zip(prompts, answers, strict=True)]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out = [0.0] * len(rows)
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    with torch.no_grad(), precisions.inference(model, precision):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            seqs = [torch.tensor(rows[i]) for i in idx]
            ids = pad(seqs, padding_value=tokenizer.pad_token_id, padding_side="right")
            mask = pad([torch.ones_like(s) for s in seqs], padding_value=0, padding_side="right")
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0]
            for i, value in zip(idx, logits.float().tolist(), strict=True):
                out[i] = value
    model.train(was_training)
    return out


def load_reward_model(ref: str, tokenizer, *, trust_remote_code: bool = False):
    """A sequence-classification model with one output (a fresh head when `ref` is a causal LM), pad id set."""
    from transformers import AutoModelForSequenceClassification
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    try:
        with suppress_seqcls_warning():
            model = AutoModelForSequenceClassification.from_pretrained(
                ref, num_labels=1, trust_remote_code=trust_remote_code, use_safetensors=True
            )
    except (OSError, ValueError) as err:
        raise UserError(f"Cannot load a reward model from '{ref}': {str(err).splitlines()[0]}") from None
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    return model


# ------------------------------------------------------------------------------------------------------ the K-wise trainer


def kwise_loss(rewards, chosen_index, rejected_index, pair_weight, margin=None):
    """Σ w·(-log σ(r_chosen - r_rejected - margin)): with w = 1/(pairs of the prompt · prompts), the mean over prompts
    of the mean over each prompt's comparisons. Returns (loss, per-pair reward differences)."""
    import torch.nn.functional as F

    diff = rewards[chosen_index] - rewards[rejected_index]
    logits = diff - margin if margin is not None else diff
    return (pair_weight * -F.logsigmoid(logits)).sum(), diff


def group_pairs(pairs, tokenizer, max_length: int):
    """Pairs in the normal form -> one row per prompt: its distinct answers tokenized once, and its comparisons."""
    import datasets

    groups: dict[int, dict] = {}
    for row in pairs:
        g = groups.setdefault(row["group"], {"prompt": row["prompt"], "answers": {}, "pairs": []})
        index = [g["answers"].setdefault(text, len(g["answers"])) for text in (row["chosen"], row["rejected"])]
        if index[0] != index[1]:
            g["pairs"].append((*index, row["margin"]))
    rows = [
        {
            "response_ids": [encode(tokenizer, g["prompt"], a, max_length) for a in g["answers"]],
            "pair_chosen": [p[0] for p in g["pairs"]],
            "pair_rejected": [p[1] for p in g["pairs"]],
            "pair_margin": [float(p[2]) for p in g["pairs"]],
        }
        for g in groups.values()
        if g["pairs"]
    ]
    return datasets.Dataset.from_list(rows)


class KWiseCollator:
    """Prompts (rows of `group_pairs`) -> one flat, right-padded batch of all their answers, and each comparison's
    (chosen, rejected) positions in it with weight 1/(the prompt's comparisons · prompts in the batch)."""

    def __init__(self, pad_token_id: int, use_margin: bool = False):
        self.pad_token_id, self.use_margin = pad_token_id, use_margin

    def __call__(self, examples: list[dict]) -> dict:
        import torch
        from trl.trainer.utils import pad

        seqs, chosen, rejected, weight, margin = [], [], [], [], []
        for ex in examples:
            base, n = len(seqs), len(ex["pair_chosen"])
            seqs += [torch.tensor(ids) for ids in ex["response_ids"]]
            chosen += [base + i for i in ex["pair_chosen"]]
            rejected += [base + i for i in ex["pair_rejected"]]
            weight += [1.0 / (n * len(examples))] * n
            margin += ex["pair_margin"]
        batch = {
            "input_ids": pad(seqs, padding_value=self.pad_token_id, padding_side="right"),
            "attention_mask": pad([torch.ones_like(s) for s in seqs], padding_value=0, padding_side="right"),
            "chosen_index": torch.tensor(chosen),
            "rejected_index": torch.tensor(rejected),
            "pair_weight": torch.tensor(weight),
        }
        if self.use_margin:
            batch["margin"] = torch.tensor(margin)
        return batch


def _kwise_trainer_class():
    import torch
    from trl import RewardTrainer

    class KWiseRewardTrainer(RewardTrainer):
        """RewardTrainer with one prompt's K answers per batch element and the mean over its K(K-1)/2 comparisons."""

        def __init__(self, *args, use_margin: bool = False, **kwargs):
            kwargs["data_collator"] = KWiseCollator(kwargs["processing_class"].pad_token_id, use_margin)
            super().__init__(*args, **kwargs)

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # already grouped and tokenized by group_pairs

        def _set_signature_columns_if_needed(self):
            self._signature_columns = ["response_ids", "pair_chosen", "pair_rejected", "pair_margin"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            chosen, rejected = inputs.pop("chosen_index"), inputs.pop("rejected_index")
            weight, margin = inputs.pop("pair_weight"), inputs.pop("margin", None)
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            rewards = outputs.logits.squeeze(-1)
            loss, diff = kwise_loss(rewards, chosen, rejected, weight, margin)
            if self.args.center_rewards_coefficient is not None:
                loss = (
                    loss
                    + self.args.center_rewards_coefficient * (weight * (rewards[chosen] + rewards[rejected]) ** 2).sum()
                )
            with torch.no_grad():
                gather = self.accelerator.gather_for_metrics
                self._metrics[mode]["accuracy"].append(gather((weight * (diff > 0).float()).sum()).mean().item())
                self._metrics[mode]["margin"].append(gather((weight * diff).sum()).mean().item())
                self._metrics[mode]["mean_reward"].append(gather(rewards.mean()).mean().item())
            return (loss, outputs) if return_outputs else loss

    return KWiseRewardTrainer


# ------------------------------------------------------------------------------------------------------ the stage


def data_spec(rec, run_dir: Path):
    """reward.data, or (unset / toy) this run's feedback/rankings.jsonl."""
    from rlhf_cli.recipe import DataSpec

    spec = rec.reward.data
    if spec is None or (spec.toy and not spec.path and not spec.hub):
        rankings = Path(run_dir) / "feedback" / "rankings.jsonl"
        if not rankings.exists():
            raise UserError(
                f"{rankings} does not exist; run `rlhf sample` and `rlhf label` first, or set reward.data.path."
            )
        base = spec.model_dump() if spec is not None else {"eval_fraction": 0.1}
        spec = DataSpec(**{**base, "toy": False, "path": str(rankings)})
    return spec


def run(rec, run_dir: Path, *, resume: bool = False, overwrite: bool = False, accept_changes: bool = False) -> dict:
    import datasets
    from trl import RewardTrainer

    from rlhf_cli.data.formats import load_stage_data, train_eval_split
    from rlhf_cli.modeling import count_parameters, load_tokenizer
    from rlhf_cli.runs import (
        check_stage_dir,
        is_main_process,
        make_callbacks,
        newest_checkpoint,
        prepare_stage_dir,
        resolve_model_dir,
        save_dir_atomic,
        write_json_atomic,
        write_lineage,
        write_model_card,
    )
    from rlhf_cli.stages.common import announce, trainer_config

    rc, run_dir = rec.reward, Path(run_dir)
    spec = data_spec(rec, run_dir)
    init = resolve_model_dir(rc.init_from, run_dir, "sft", "reward.init_from")
    stage_dir = check_stage_dir(
        run_dir, "reward", resume=resume, overwrite=overwrite, recipe=rec, accept_changes=accept_changes
    )  # writes nothing
    toy_dir = run_dir / "data" / "toy"
    pairs = load_stage_data("reward", spec, toy_dir=toy_dir, seed=rec.seed)
    train, held = train_eval_split(pairs, spec, "reward", seed=rec.seed, toy_dir=toy_dir)
    warn_if_few_prompts(pairs, run_dir, spec)

    tokenizer = load_tokenizer(init, trust_remote_code=rec.model.trust_remote_code)
    from transformers import set_seed

    set_seed(rec.seed)  # a fresh head or resized embeddings start the same in every run of this seed
    model = load_reward_model(init, tokenizer, trust_remote_code=rec.model.trust_remote_code)
    streaming = not isinstance(train, datasets.Dataset)
    kwise = rc.kwise and not streaming and max(_group_sizes(train).values(), default=1) > 1
    if kwise:
        train_ds, eval_ds = group_pairs(train, tokenizer, rc.max_length), group_pairs(held, tokenizer, rc.max_length)
        cls, extra = _kwise_trainer_class(), {"use_margin": rc.margin}
    else:
        train_ds, eval_ds = (_tokenize_pairs(d, tokenizer, rc.max_length, rc.margin) for d in (train, held))
        cls, extra = RewardTrainer, {}
    n_params = count_parameters(model)
    config = trainer_config(
        rec, "reward", stage_dir, n_params=n_params, max_length=rc.max_length, prediction_loss_only=True
    )
    chosen = announce(rec, "reward", n_params)
    trainer = cls(
        model=model,
        args=config,
        train_dataset=train_ds,
        eval_dataset=eval_ds if len(eval_ds) else None,
        processing_class=tokenizer,
        callbacks=[make_callbacks(stage_dir, "reward")],
        **extra,
    )
    prepare_stage_dir(
        run_dir, "reward", resume=resume, overwrite=overwrite, recipe=rec, accept_changes=accept_changes
    )  # inputs are good: first write
    checkpoint = newest_checkpoint(stage_dir / "checkpoints") if resume else None
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if not is_main_process():
        return {}

    model = trainer.model
    metrics = {
        "objective": "kwise" if kwise else "pairwise",
        "train_pairs": len(train) if not streaming else None,
        "eval_pairs": len(held),
        **chosen,
        **pair_metrics(model, tokenizer, held, rc.max_length, rec.precision),
    }
    if not streaming:
        picked = random.Random(0).sample(range(len(train)), min(FIT_PAIRS, len(train)))
        fit_pairs = [train[i] for i in sorted(picked)]  # rows, not a Dataset: no indices file in the datasets cache
        fit = pair_metrics(model, tokenizer, fit_pairs, rc.max_length, rec.precision)
        metrics.update({f"train_{k}": fit[k] for k in ("accuracy", "accuracy_low", "accuracy_high")})
        metrics["train_accuracy_pairs"] = len(fit_pairs)
    metrics.update(gold_agreement(rec, run_dir, spec, model, tokenizer, {r["group"] for r in held}))
    stats = score_stats(model, tokenizer, train, rc.max_length, source="training answers", precision=rec.precision)
    if metrics["eval_pairs"]:
        held_out = (
            f"held-out accuracy {metrics['accuracy']:.3f} [{metrics['accuracy_low']:.3f}, "
            f"{metrics['accuracy_high']:.3f}] on {metrics['eval_pairs']} pairs"
        )
    else:  # not 0 % on 0 pairs: nothing was measured
        metrics.update(accuracy=None, accuracy_low=None, accuracy_high=None, mean_margin=None)
        held_out = (
            "no held-out pairs (the data has a single prompt, or reward.data.eval_fraction is 0; "
            "set reward.data.eval_path to measure accuracy)"
        )

    def write(tmp: Path):
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / "reward_stats.json", stats)
        write_lineage(
            tmp,
            stage="reward",
            parents={"init": init},
            recipe=rec,
            data={"spec": spec.model_dump(), "seed": rec.seed, "objective": metrics["objective"]},
        )
        write_model_card(
            tmp,
            title=f"{rec.name}: reward model",
            body=(
                f"A reward model (one scalar per conversation) trained by `rlhf reward` from `{init}` on `{spec.path or spec.hub}`.\n\n"
                f"Pairwise accuracy: {held_out}. "
                f"Scores over the training answers: mean {stats['mean']:.3f}, std {stats['std']:.3f} (reward_stats.json)."
            ),
        )

    final = save_dir_atomic(stage_dir / "final", write)
    write_json_atomic(stage_dir / "eval.json", metrics)
    gold = f", gold-order agreement {metrics['gold_accuracy']:.3f}" if "gold_accuracy" in metrics else ""
    fit = (
        f" ({metrics['train_accuracy']:.3f} on {metrics['train_accuracy_pairs']} training pairs)"
        if "train_accuracy" in metrics
        else ""
    )
    print(f"Reward model saved to {final} ({metrics['objective']} loss): {held_out}{fit}{gold}")
    return metrics


def warn_if_few_prompts(pairs, run_dir: Path, spec) -> None:
    """A reward model learns from the prompts it sees ranked: say so when there are few (a person who stopped
    labelling after four prompts), and how many of this run's samples are still unranked."""
    import datasets

    from rlhf_cli.runs import is_main_process

    if not isinstance(pairs, datasets.Dataset) or not is_main_process():
        return
    prompts = len(set(pairs["group"]))
    if prompts >= FEW_PROMPTS:
        return
    samples = Path(run_dir) / "feedback" / "samples.jsonl"
    own = spec.path and Path(spec.path).resolve() == (Path(run_dir) / "feedback" / "rankings.jsonl").resolve()
    of = ""
    if own and samples.exists():
        of = f" of the {sum(1 for line in samples.open(encoding='utf-8') if line.strip())} sampled"
        of += "; rank more with `rlhf label` (it continues where you stopped)"
    print(
        f"Warning: reward: the data rank only {prompts} prompts{of}. A reward model needs hundreds; its accuracy "
        f"here rests on very few pairs, and PPO will optimise whatever it happened to learn.",
        flush=True,
    )


def _group_sizes(pairs) -> dict[int, int]:
    from collections import Counter

    return Counter(pairs["group"])


def _tokenize_pairs(pairs, tokenizer, max_length: int, use_margin: bool):
    def tok(row):
        return {
            "chosen_ids": encode(tokenizer, row["prompt"], row["chosen"], max_length),
            "rejected_ids": encode(tokenizer, row["prompt"], row["rejected"], max_length),
        }

    out = pairs.map(tok, remove_columns=[c for c in pairs.column_names if c != "margin" or not use_margin])
    return out


# ------------------------------------------------------------------------------------------------------ evaluation


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p, denom = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / denom, z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))  # rounding must not leave p outside


def score_pairs(model, tokenizer, pairs, max_length: int, precision: str = "auto") -> tuple[list[float], list[float]]:
    """Scores of each pair's chosen and rejected answer (each distinct (prompt, answer) scored once)."""
    import json

    keys = {}
    for row in pairs:
        for text in (row["chosen"], row["rejected"]):
            keys.setdefault((json.dumps(row["prompt"]), text), (row["prompt"], text))
    values = score(
        model,
        tokenizer,
        [p for p, _ in keys.values()],
        [a for _, a in keys.values()],
        max_length=max_length,
        precision=precision,
    )
    table = dict(zip(keys, values, strict=True))
    chosen = [table[(json.dumps(r["prompt"]), r["chosen"])] for r in pairs]
    rejected = [table[(json.dumps(r["prompt"]), r["rejected"])] for r in pairs]
    return chosen, rejected


def pair_metrics(model, tokenizer, pairs, max_length: int, precision: str = "auto") -> dict:
    """Pairwise accuracy (with a 95 % Wilson interval) and mean margin r_chosen - r_rejected on `pairs`."""
    pairs = [r for r in pairs if r["chosen"] != r["rejected"]]
    chosen, rejected = score_pairs(model, tokenizer, pairs, max_length, precision)
    right = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    low, high = wilson(right, len(pairs))
    return {
        "accuracy": right / max(1, len(pairs)),
        "accuracy_low": low,
        "accuracy_high": high,
        "mean_margin": sum(c - r for c, r in zip(chosen, rejected, strict=True)) / max(1, len(pairs)),
    }


def gold_agreement(rec, run_dir: Path, spec, model, tokenizer, held_groups: set[int]) -> dict:
    """On the toy world: how often the reward model orders two held-out sampled answers as the gold reward does."""
    from rlhf_cli.data.formats import group_id
    from rlhf_cli.data.toy import ToyWorld
    from rlhf_cli.feedback import prompt_text, read_samples, unique_answers

    samples_path = Path(run_dir) / "feedback" / "samples.jsonl"
    own = spec.path and Path(spec.path).resolve() == (Path(run_dir) / "feedback" / "rankings.jsonl").resolve()
    if not (own and rec.feedback.data.toy and samples_path.exists()):
        return {}
    world = ToyWorld(rec.seed)
    right = total = 0
    for row in read_samples(samples_path):
        if group_id(row["prompt"]) not in held_groups:
            continue
        keep = unique_answers(row)
        answers = [row["answers"][i] for i in keep]
        gold = [
            world.gold_reward(prompt_text(row["prompt"]), a, row["finished"][i])
            for a, i in zip(answers, keep, strict=True)
        ]
        rm = score(
            model,
            tokenizer,
            [row["prompt"]] * len(answers),
            answers,
            max_length=rec.reward.max_length,
            precision=rec.precision,
        )
        for i in range(len(answers)):
            for j in range(i + 1, len(answers)):
                if gold[i] != gold[j]:
                    total += 1
                    right += (gold[i] > gold[j]) == (rm[i] > rm[j])
    low, high = wilson(right, total)
    return {
        "gold_accuracy": right / max(1, total),
        "gold_accuracy_low": low,
        "gold_accuracy_high": high,
        "gold_pairs": total,
    }


def score_stats(
    model, tokenizer, pairs, max_length: int, *, source: str, limit: int = STATS_ANSWERS, precision: str = "auto"
) -> dict:
    """Mean and standard deviation of the scores of (up to `limit`) distinct answers in `pairs`."""
    import json
    import statistics

    seen = {}
    for row in pairs:
        for text in (row["chosen"], row["rejected"]):
            seen.setdefault((json.dumps(row["prompt"]), text), (row["prompt"], text))
    items = list(seen.values())
    random.Random(0).shuffle(items)
    items = items[:limit]
    values = score(
        model, tokenizer, [p for p, _ in items], [a for _, a in items], max_length=max_length, precision=precision
    )
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 1.0,
        "n": len(values),
        "source": source,
    }


# ------------------------------------------------------------------------------------------------------ rlhf reward inspect


def inspect_reward_model(model_dir, data: str | None = None, out_dir=None) -> dict:
    """Is this reward model any good? Accuracy with a 95 % interval, by margin and length bucket, score histograms,
    the correlation of score with answer length (a length-hacking alarm), score mean/std saved next to the model.

    `data`: any reward format; default the held-out part of the data the model was trained on (from its lineage.json).
    Writes <out_dir>/inspect.json and scores.png (default out_dir: MODEL_DIR/../inspect). Returns the report.
    """
    from rlhf_cli.data.formats import load_stage_data, train_eval_split
    from rlhf_cli.modeling import inference_device, load_tokenizer
    from rlhf_cli.recipe import DataSpec
    from rlhf_cli.runs import read_json, write_json_atomic

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise UserError(f"{model_dir} is not a model folder (no config.json); give a reward model's final/ folder.")
    if data is None:
        lineage = model_dir / "lineage.json"
        if not lineage.exists():
            raise UserError(f"{model_dir} has no lineage.json telling what it was trained on; pass --data FILE.")
        info = read_json(lineage).get("data") or {}
        if read_json(lineage).get("stage") != "reward" or "spec" not in info:
            raise UserError(
                f"{model_dir} is not a reward model trained by `rlhf reward`; pass --data FILE to score it."
            )
        spec = DataSpec(**info["spec"])
        if spec.path and not Path(spec.path).exists():
            raise UserError(f"{spec.path} (the data {model_dir} was trained on) is gone; pass --data FILE.")
        pairs = load_stage_data("reward", spec, seed=info["seed"])
        pairs = train_eval_split(pairs, spec, "reward", seed=info["seed"])[1]
        source = f"{spec.path or spec.hub} (held-out prompts)"
    else:
        pairs, source = load_stage_data("reward", DataSpec(path=data)), data
    tokenizer = load_tokenizer(str(model_dir))
    model = load_reward_model(str(model_dir), tokenizer).to(inference_device())
    pairs = [r for r in pairs if r["chosen"] != r["rejected"]]
    chosen, rejected = score_pairs(model, tokenizer, pairs, max_length=None)
    n_tokens = {}
    for row in pairs:
        for text in (row["chosen"], row["rejected"]):
            n_tokens.setdefault(text, len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    report = inspect_scores(pairs, chosen, rejected, n_tokens)
    report["data"] = source

    out = Path(out_dir) if out_dir else model_dir.parent / "inspect"
    out.mkdir(parents=True, exist_ok=True)
    report["histogram"] = str(_histogram(chosen, rejected, out / "scores.png"))
    stats_path = model_dir / "reward_stats.json"  # the training-time stats stay what PPO normalises with
    stats = read_json(stats_path) if stats_path.exists() else {**report["scores"], "source": source}
    stats["inspect"] = {**report["scores"], "source": source}
    write_json_atomic(stats_path, stats)
    write_json_atomic(out / "inspect.json", report)
    _print_report(report, out)
    return report


def inspect_scores(pairs: list[dict], chosen: list[float], rejected: list[float], n_tokens: dict[str, int]) -> dict:
    """The inspect report from scores: accuracy and interval, buckets, score spread, length correlation and alarm."""
    import statistics

    right = [c > r for c, r in zip(chosen, rejected, strict=True)]
    low, high = wilson(sum(right), len(right))

    def bucket(names: list[str]) -> dict:
        table = {}
        for name, ok in zip(names, right, strict=True):
            table.setdefault(name, []).append(ok)
        return {name: {"pairs": len(v), "accuracy": sum(v) / len(v)} for name, v in sorted(table.items())}

    margins = [r["margin"] for r in pairs]
    if any(m != 0 for m in margins):  # the data's own margins (score differences)
        cuts, by = _tertiles([abs(m) for m in margins]), "data margin"
        margin_names = [_bucket_name(abs(m), cuts) for m in margins]
    else:  # no margins in the data: how accuracy grows with the model's own confidence |r_chosen - r_rejected|
        gaps = [abs(c - r) for c, r in zip(chosen, rejected, strict=True)]
        cuts, by = _tertiles(gaps), "reward-model score gap"
        margin_names = [_bucket_name(g, cuts) for g in gaps]
    diffs = [n_tokens[r["chosen"]] - n_tokens[r["rejected"]] for r in pairs]
    length_names = ["chosen shorter" if d < 0 else "same length" if d == 0 else "chosen longer" for d in diffs]

    answers = {}
    for row, c, r in zip(pairs, chosen, rejected, strict=True):
        answers[(str(row["prompt"]), row["chosen"])] = (c, n_tokens[row["chosen"]])
        answers[(str(row["prompt"]), row["rejected"])] = (r, n_tokens[row["rejected"]])
    scores, lengths = [s for s, _ in answers.values()], [n for _, n in answers.values()]
    corr = _pearson(scores, lengths)
    longer = [(c > r) == (d > 0) for c, r, d in zip(chosen, rejected, diffs, strict=True) if d != 0]
    return {
        "pairs": len(pairs),
        "accuracy": sum(right) / max(1, len(right)),
        "accuracy_low": low,
        "accuracy_high": high,
        "by_margin": {"by": by, "buckets": bucket(margin_names)},
        "by_length": bucket(length_names),
        "scores": {"mean": statistics.fmean(scores), "std": statistics.pstdev(scores), "n": len(scores)},
        "chosen_mean": statistics.fmean(chosen),
        "rejected_mean": statistics.fmean(rejected),
        "length_correlation": corr,
        "prefers_longer": sum(longer) / max(1, len(longer)),
        "chosen_longer_in_data": sum(d > 0 for d in diffs) / max(1, sum(d != 0 for d in diffs)),
        "length_alarm": abs(corr) >= LENGTH_ALARM,
    }


def _tertiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return ordered[len(ordered) // 3], ordered[2 * len(ordered) // 3]


def _bucket_name(value: float, cuts: tuple[float, float]) -> str:
    return (
        f"1 low (< {cuts[0]:.3g})"
        if value < cuts[0]
        else f"2 mid (< {cuts[1]:.3g})"
        if value < cuts[1]
        else f"3 high (>= {cuts[1]:.3g})"
    )


def _pearson(xs: list[float], ys: list[float]) -> float:
    import statistics

    if len(xs) < 3 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return 0.0
    return statistics.correlation(xs, ys)


def _histogram(chosen: list[float], rejected: list[float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = 30 if len(chosen) > 60 else 12
    ax.hist(chosen, bins=bins, alpha=0.6, label="chosen")
    ax.hist(rejected, bins=bins, alpha=0.6, label="rejected")
    ax.set_xlabel("reward-model score")
    ax.set_ylabel("answers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _print_report(report: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"Reward model on {report['pairs']} pairs of {report['data']}: accuracy {report['accuracy']:.3f} "
        f"(95 % interval {report['accuracy_low']:.3f}-{report['accuracy_high']:.3f})"
    )
    for title, buckets in (
        (f"by {report['by_margin']['by']}", report["by_margin"]["buckets"]),
        ("by length", report["by_length"]),
    ):
        table = Table(title=f"accuracy {title}")
        table.add_column("bucket")
        table.add_column("pairs", justify="right")
        table.add_column("accuracy", justify="right")
        for name, row in buckets.items():
            table.add_row(name, str(row["pairs"]), f"{row['accuracy']:.3f}")
        console.print(table)
    s = report["scores"]
    console.print(
        f"scores: mean {s['mean']:.3f}, std {s['std']:.3f} over {s['n']} answers; chosen mean "
        f"{report['chosen_mean']:.3f}, rejected mean {report['rejected_mean']:.3f}"
    )
    console.print(
        f"correlation of score with answer length: {report['length_correlation']:+.2f}; prefers the longer "
        f"answer in {report['prefers_longer']:.0%} of pairs (the data: {report['chosen_longer_in_data']:.0%})"
    )
    if report["length_alarm"]:
        console.print(
            f"[bold red]Length-hacking alarm[/bold red]: |correlation| >= {LENGTH_ALARM}; this reward model "
            "may reward length itself, and PPO will learn to write longer answers rather than better ones."
        )
    console.print(f"Report: {out / 'inspect.json'}, histogram: {report['histogram']}")
