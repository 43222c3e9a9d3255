"""Greedy answers of a chat model to held-out prompts, and what they are worth: the share finished (end-of-text) and
well-formed, their length, and on the toy world their gold reward and right-fact rate; a table of a few of them."""

from __future__ import annotations

import math

from rlhf_cli.data.toy import KINDS, repeated_parts
from rlhf_cli.evaluation.stats import bootstrap_ci, proportion
from rlhf_cli.models.generation import generate_answers
from rlhf_cli.models.scoring import score

# per kind of toy-world prompt: what its rate measures (a share, or a mean per answer), from ToyWorld.judge's keys
KIND_RATES = {
    "fact": (("right_fact_rate", "right_fact"),),
    "describe": (("right_facts", "right_facts"), ("wrong_facts", "wrong_facts")),
    "unknown": (("honest_rate", "honest"), ("made_up_rate", "made_up")),
    "harm": (("decline_rate", "declined"), ("complied_rate", "complied")),
}

BEST_OF_N_SETTINGS = "best_of_n.json"  # in best_of_n/final/: how that policy answers (n, temperature, judge)


def well_formed(answer) -> bool:
    """Finished (ended with end-of-text), not empty, and ends a sentence."""
    return answer.finished and bool(answer.text) and answer.text.rstrip()[-1:] in ".!?\"')"


def score_answers(recipe, model, tokenizer, prompts, world) -> tuple[dict, list]:
    """Greedy answers to `prompts` and their metrics (finished share, well-formed share, mean gold reward)."""

    answers = [
        group[0]
        for group in generate_answers(
            model,
            tokenizer,
            prompts,
            temperature=0.0,
            max_new_tokens=recipe.eval.max_new_tokens,
            progress="answering",
            precision=recipe.precision,
        )
    ]
    return answer_metrics(prompts, answers, world)


def answer_metrics(prompts, answers, world) -> tuple[dict, list]:
    """What answers to `prompts` are worth: finished and well-formed shares, length, the share that repeats a word or
    sentence (`repeated_parts`), and on the toy world (`world`) the mean gold reward, the right-fact rate of one-fact
    questions and each kind's figures (`kind_metrics`); with the rows (prompt text, answer, gold) for a table."""
    n = max(len(answers), 1)
    out = {
        "finished_rate": sum(a.finished for a in answers) / n,
        "well_formed_rate": sum(well_formed(a) for a in answers) / n,
        "mean_answer_tokens": sum(a.num_tokens for a in answers) / n,
        "repeat_rate": sum(repeated_parts(a.text) > 0 for a in answers) / n,
    }
    golds = None
    if world is not None:
        judged = [world.judge(p[-1]["content"], a.text, a.finished) for p, a in zip(prompts, answers, strict=True)]
        golds = [j["gold"] for j in judged]
        out["gold_reward"] = sum(golds) / n
        facts = [j["right_fact"] for j in judged if "right_fact" in j]
        out["right_fact_rate"] = sum(facts) / len(facts) if facts else None
        out["kinds"] = kind_metrics(judged)
    return out, [
        (p[-1]["content"], a, g) for p, a, g in zip(prompts, answers, golds or [None] * len(answers), strict=True)
    ]


def kind_metrics(judged: list[dict]) -> dict:
    """Per kind of toy-world prompt (ToyWorld.judge of each answer): how many, the gold reward, the kind's rates
    (right facts; facts per description; honest and made-up answers about strangers; declined and complied harmful
    requests), the length in words and the share of answers that repeat a word or sentence (`repeated_parts`), each
    with a 95 % interval ({mean, low, high, n})."""
    out = {}
    for kind in KINDS:
        rows = [j for j in judged if j.get("kind") == kind]
        if not rows:
            continue
        entry = {"n": len(rows), "gold_reward": bootstrap_ci([j["gold"] for j in rows])}
        for name, key in KIND_RATES[kind]:
            values = [j[key] for j in rows]
            is_share = all(isinstance(v, bool) for v in values)
            entry[name] = proportion(sum(values), len(values)) if is_share else bootstrap_ci(values)
        entry["length"] = bootstrap_ci([j["words"] for j in rows])
        entry["repeat_rate"] = proportion(sum(j.get("repeats", 0) > 0 for j in rows), len(rows))
        out[kind] = entry
    return out


def best_of_n(recipe, model, tokenizer, judge, prompts, *, n: int, temperature: float, seed: int):
    """Best-of-n: `n` sampled answers to each prompt, the one `judge` (a reward model and its tokenizer) scores highest.

    Returns the chosen answers and, per prompt, every answer's reward-model score (the chosen one is their argmax)."""
    groups = generate_answers(
        model,
        tokenizer,
        prompts,
        num_return_sequences=n,
        max_new_tokens=recipe.eval.max_new_tokens,
        temperature=temperature,
        batch_size=max(64, n),
        seed=seed,
        progress=f"best of {n}",
        precision=recipe.precision,
    )
    flat_prompts = [p for p, group in zip(prompts, groups, strict=True) for _ in group]
    flat = score(*judge, flat_prompts, [a.text for g in groups for a in g], max_length=recipe.reward.max_length,
                 precision=recipe.precision)  # fmt: skip
    scores = [flat[i * n : (i + 1) * n] for i in range(len(groups))]
    chosen = [group[max(range(n), key=row.__getitem__)] for group, row in zip(groups, scores, strict=True)]
    return chosen, scores


def best_of_n_kl(n: int) -> float:
    """The KL of best-of-n to the model it samples from, log n - (n-1)/n nats (Stiennon et al. 2020; an upper bound)."""
    return math.log(n) - (n - 1) / n


def print_samples(samples) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="SFT model: sample answers to held-out prompts (greedy)", show_lines=True)
    table.add_column("prompt", max_width=40)
    table.add_column("answer", max_width=60)
    table.add_column("finished")
    if samples and samples[0][2] is not None:
        table.add_column("gold")
    for prompt, answer, gold in samples:
        row = [prompt, answer.text or "(empty)", "yes" if answer.finished else "no"]
        table.add_row(*row, *([f"{gold:+.2f}"] if gold is not None else []))
    Console().print(table)
