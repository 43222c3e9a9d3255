"""Stage 3a: a reward model that scores answers the way the rankings do (TRL's RewardTrainer, InstructGPT's K-wise loss).

    rlhf sample --recipe tiny && rlhf label --recipe tiny && rlhf reward --recipe tiny
    rlhf reward inspect runs/tiny/reward/final          # accuracy with a 95 % interval, length bias, score spread

The model is the SFT model with a scalar head (`AutoModelForSequenceClassification`, num_labels=1; `reward.init_from`
starts elsewhere). It scores a conversation rendered with the chat template, the whole answer including its end-of-text;
the score is read at the last token. Data: any reward format of the data layer (`reward.data`; default this run's
feedback/rankings.jsonl, and with it a people's round's feedback/people/rankings.jsonl when the run has one: the toy
annotator's and the people's comparisons together, each file's count printed and saved in eval.json "comparisons"),
split by prompt so one prompt's pairs never straddle train and eval.

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

import random
from pathlib import Path

from rlhf_cli.data import group_id, load_stage_data, train_eval_split
from rlhf_cli.data.toy import ToyWorld
from rlhf_cli.evaluation.stats import proportion
from rlhf_cli.models.kwise import group_pairs, kwise_trainer_class
from rlhf_cli.models.modeling import count_parameters, load_tokenizer, save_model
from rlhf_cli.models.scoring import (
    count_cut,
    encode,
    length_caution,
    load_reward_model,
    pair_metrics,
    score,
    score_stats,
)
from rlhf_cli.people.feedback import prompt_text, read_samples, unique_answers, with_people_rankings
from rlhf_cli.recipe import DataSpec
from rlhf_cli.runtime import callbacks, distributed, files, runs
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.layout import RunLayout, path_in_run
from rlhf_cli.stages.common import gather_weights, model_options, trainer_config
from rlhf_cli.stages.driver import Job, stage_runner

STAGE = "reward"
# Training pairs scored for train_accuracy: next to the held-out accuracy it tells underfitting from overfitting.
FIT_PAIRS = 1024
FEW_PROMPTS = 100  # ranked prompts under which the stage warns that the reward model can learn little


# ------------------------------------------------------------------------------------------------------ the stage


def data_spec(rec, run_dir: Path, section: str = "reward"):
    """reward.data (or dpo.data), or, when unset or toy, this run's feedback/rankings.jsonl."""
    spec = getattr(rec, section).data
    if spec is None or (spec.toy and not spec.path and not spec.hub):
        rankings = RunLayout(run_dir).rankings
        if not rankings.exists():
            raise UserError(
                f"{rankings} does not exist; run {runs.run_first(RunLayout(run_dir), 'label', rec)} first, or set "
                f"{section}.data.path."
            )
        base = spec.model_dump() if spec is not None else {"eval_fraction": 0.1}
        spec = DataSpec(**{**base, "toy": False, "path": str(rankings)})
    return spec


def setup(ctx) -> Job:
    """Rankings, tokenizer, the SFT model with a scalar head, and the (K-wise) RewardTrainer, every input checked; the
    driver (rlhf_cli.stages.driver) does the rest: `reward/final`, `reward/eval.json`."""
    import datasets
    from transformers import set_seed
    from trl import RewardTrainer

    rec, rc, run_dir, stage_dir = ctx.recipe, ctx.recipe.reward, ctx.layout.root, ctx.stage_dir
    spec = data_spec(rec, run_dir)
    init = runs.resolve_model_dir(rc.init_from, run_dir, "sft", "reward.init_from", recipe=rec)
    toy_dir = ctx.layout.toy
    pairs = load_stage_data(STAGE, spec, toy_dir=toy_dir, seed=rec.seed)
    pairs, comparisons = with_people_rankings(pairs, spec, ctx.layout)
    train, held = train_eval_split(pairs, spec, STAGE, seed=rec.seed, toy_dir=toy_dir)
    warn_if_few_prompts(pairs, run_dir, spec)

    tokenizer = load_tokenizer(init, trust_remote_code=rec.model.trust_remote_code)
    warn_if_cut(tokenizer, train, rc.max_length)
    set_seed(rec.seed)  # a fresh head or resized embeddings start the same in every run of this seed
    model = load_reward_model(init, tokenizer, **model_options(rec))  # fp32 master weights
    streaming = not isinstance(train, datasets.Dataset)
    kwise = rc.kwise and not streaming and max(_group_sizes(train).values(), default=1) > 1
    if kwise:
        train_ds, eval_ds = group_pairs(train, tokenizer, rc.max_length), group_pairs(held, tokenizer, rc.max_length)
        cls, extra = kwise_trainer_class(), {"use_margin": rc.margin}
    else:
        train_ds, eval_ds = (_tokenize_pairs(d, tokenizer, rc.max_length, rc.margin) for d in (train, held))
        cls, extra = RewardTrainer, {}
    n_params = count_parameters(model)
    config = trainer_config(
        rec, STAGE, stage_dir, n_params=n_params, max_length=rc.max_length, prediction_loss_only=True
    )
    trainer = cls(
        model=model,
        args=config,
        train_dataset=train_ds,
        eval_dataset=eval_ds if len(eval_ds) else None,
        processing_class=tokenizer,
        callbacks=[callbacks.make_callbacks(stage_dir, STAGE)],
        **extra,
    )
    stats = {}  # score mean/std over the training answers: reward_stats.json, for PPO to normalise with
    weights = {}

    def evaluate(_output, _checkpoint) -> dict:
        """Held-out and training-pair accuracy, agreement with the gold order (toy world), score statistics; on every
        process (scoring is collective when the model is sharded), the main one writes them."""
        with distributed.whole_model(trainer.model_wrapped, trainer.accelerator) as model:
            return _evaluate(model)

    def _evaluate(model) -> dict:
        metrics = {
            "objective": "kwise" if kwise else "pairwise",
            "comparisons": comparisons,  # preference pairs from each file (the annotator's, the people's)
            "train_pairs": len(train) if not streaming else None,
            "eval_pairs": len(held),
            **pair_metrics(model, tokenizer, held, rc.max_length, rec.precision, with_length=True),
        }
        if not streaming:
            picked = random.Random(0).sample(range(len(train)), min(FIT_PAIRS, len(train)))
            fit_pairs = [train[i] for i in sorted(picked)]  # rows, not a Dataset: no indices file in the datasets cache
            fit = pair_metrics(model, tokenizer, fit_pairs, rc.max_length, rec.precision)
            metrics["train_accuracy"] = fit["accuracy"]
        metrics.update(gold_agreement(rec, run_dir, spec, model, tokenizer, {r["group"] for r in held}))
        stats.update(
            score_stats(model, tokenizer, train, rc.max_length, source="training answers", precision=rec.precision)
        )
        if not metrics["eval_pairs"]:  # not 0 % on 0 pairs: nothing was measured
            metrics.update(accuracy=None, mean_margin=None)
        return metrics

    def export(_staging) -> None:
        weights["state"] = gather_weights(trainer)

    def write_final(tmp: Path, metrics: dict, _staging) -> None:
        saved = save_model(trainer.model, tmp, source=init, setting=rec.model.save_dtype, state_dict=weights["state"])
        tokenizer.save_pretrained(tmp)
        files.write_json_atomic(tmp / "reward_stats.json", stats)
        data = {
            "spec": spec.model_dump(),
            "seed": rec.seed,
            "objective": metrics["objective"],
            "comparisons": comparisons,
        }
        runs.write_lineage(tmp, run_dir=run_dir, stage=STAGE, parents={"init": init}, recipe=rec, data=data)
        runs.write_model_card(
            tmp,
            title=f"{rec.name}: reward model",
            body=(
                f"A reward model (one scalar per conversation) trained by `rlhf reward` from `{path_in_run(init, run_dir)}` on "
                f"`{path_in_run(spec.path, run_dir) or spec.hub}`.\n\nPairwise accuracy: {_held_out_text(metrics)}. Scores over the training "
                f"answers: mean {stats['mean']:.3f}, std {stats['std']:.3f} (reward_stats.json).\n\n{saved}"
            ),
        )

    return Job(trainer, n_params, evaluate, write_final, _summary, export=export)


run = stage_runner(STAGE, setup)


def _held_out_text(m: dict) -> str:
    if m["eval_pairs"]:
        a = m["accuracy"]
        return f"held-out accuracy {a['mean']:.3f} [{a['low']:.3f}, {a['high']:.3f}] on {a['n']} pairs"
    return (
        "no held-out pairs (the data has a single prompt, or reward.data.eval_fraction is 0; "
        "set reward.data.eval_path to measure accuracy)"
    )


def _summary(final: Path, m: dict) -> None:
    gold = f", gold-order agreement {m['gold_accuracy']['mean']:.3f}" if "gold_accuracy" in m else ""
    if m.get("gold_accuracy_by_pair"):
        gold += " (" + ", ".join(f"{k} {v['mean']:.2f}" for k, v in m["gold_accuracy_by_pair"].items()) + ")"
    fit = m.get("train_accuracy")
    fit = f" ({fit['mean']:.3f} on {fit['n']} training pairs)" if fit else ""
    print(f"Reward model saved to {final} ({m['objective']} loss): {_held_out_text(m)}{fit}{gold}")
    if caution := length_caution(m.get("length")):  # as `rlhf reward inspect` and the report say it
        print(f"Caution: {caution}.")


def warn_if_few_prompts(pairs, run_dir: Path, spec) -> None:
    """A reward model learns from the prompts it sees ranked: say so when there are few (a person who stopped
    labelling after four prompts), and how many of this run's samples are still unranked."""
    import datasets

    if not isinstance(pairs, datasets.Dataset) or not distributed.is_main_process():
        return
    prompts = len(set(pairs["group"]))
    if prompts >= FEW_PROMPTS:
        return
    samples = RunLayout(run_dir).samples
    layout = RunLayout(run_dir)  # the run's own rankings (a later round: every round's so far)
    own = spec.path and Path(spec.path).resolve() in (layout.rankings.resolve(), layout.rankings_so_far.resolve())
    of = ""
    if own and samples.exists():
        of = f" of the {sum(1 for line in samples.open(encoding='utf-8') if line.strip())} sampled"
        of += "; rank more with `rlhf label` (it continues where you stopped)"
    print(
        f"Warning: reward: the data rank only {prompts} prompts{of}. A reward model needs hundreds; its accuracy "
        f"here rests on very few pairs, and PPO will optimise whatever it happened to learn.",
        flush=True,
    )


def warn_if_cut(tokenizer, pairs, max_length: int) -> None:
    """Say how many training pairs `reward.max_length` cuts (as SFT says of its conversations): the score is read at
    the end, so the start of the prompt is what is lost."""
    cut, counted = count_cut(tokenizer, pairs, max_length)
    if cut and distributed.is_main_process():
        print(
            f"reward: {cut} of {counted} training pairs are longer than max_length={max_length} tokens and will be "
            "cut (their start is dropped; raise reward.max_length to keep them whole).",
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


def gold_agreement(rec, run_dir: Path, spec, model, tokenizer, held_groups: set[int]) -> dict:
    """On the toy world: how often the reward model orders two held-out sampled answers as the gold reward does."""

    samples_path = RunLayout(run_dir).samples
    layout = RunLayout(run_dir)  # the run's own rankings (a later round: every round's so far)
    own = spec.path and Path(spec.path).resolve() in (layout.rankings.resolve(), layout.rankings_so_far.resolve())
    if not (own and rec.feedback.data.toy and samples_path.exists()):
        return {}
    rows = [row for row in read_samples(samples_path) if group_id(row["prompt"]) in held_groups]
    overall, by_pair = gold_order_accuracy(rec, rows, model, tokenizer, by_pair_kind=True)
    return {"gold_accuracy": overall, "gold_accuracy_by_pair": by_pair}


PAIR_KINDS = ("style", "fact", "honesty", "harm")


def pair_kind(kind: str | None, a: dict, b: dict) -> str:
    """What tells two answers to one prompt apart (ToyWorld.judge of each): a stranger's prompt is about honesty, a
    harmful request about harm; to a question or a description, answers stating other facts differ in fact, the rest
    in style (courtesy, form, length)."""
    if kind == "unknown":
        return "honesty"
    if kind == "harm":
        return "harm"
    content = ("right_fact", "right_facts", "wrong_facts")
    return "fact" if any(a.get(k) != b.get(k) for k in content) else "style"


def gold_order_accuracy(rec, sample_rows, model, tokenizer, by_pair_kind: bool = False):
    """The share of pairs of different gold reward among each row's distinct answers that the reward model orders as
    the toy world's gold reward does ({mean, low, high, n}); with `by_pair_kind`, also that share per kind of pair
    (`pair_kind`: style, fact, honesty, harm)."""
    world = ToyWorld(rec.seed)
    right = total = 0
    kinds = {k: [0, 0] for k in PAIR_KINDS}
    for row in sample_rows:
        keep = unique_answers(row)
        answers = [row["answers"][i] for i in keep]
        text = prompt_text(row["prompt"])
        judged = [world.judge(text, a, row["finished"][i]) for a, i in zip(answers, keep, strict=True)]
        gold = [j["gold"] for j in judged]
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
                    agree = (gold[i] > gold[j]) == (rm[i] > rm[j])
                    total, right = total + 1, right + agree
                    counts = kinds[pair_kind(judged[i]["kind"], judged[i], judged[j])]
                    counts[0], counts[1] = counts[0] + agree, counts[1] + 1
    overall = proportion(right, total)
    if not by_pair_kind:
        return overall
    return overall, {k: proportion(*counts) for k, counts in kinds.items() if counts[1]}
