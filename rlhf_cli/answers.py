"""Greedy answers of a chat model to held-out prompts, and what they are worth: the share finished (end-of-text) and
well-formed, their length, and on the toy world their gold reward and right-fact rate; a table of a few of them."""

from __future__ import annotations

from rlhf_cli.generation import generate_answers


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
    n = max(len(answers), 1)
    out = {
        "finished_rate": sum(a.finished for a in answers) / n,
        "well_formed_rate": sum(well_formed(a) for a in answers) / n,
        "mean_answer_tokens": sum(a.num_tokens for a in answers) / n,
    }
    golds = None
    if world is not None:
        golds = [world.gold_reward(p[-1]["content"], a.text, a.finished) for p, a in zip(prompts, answers, strict=True)]
        out["gold_reward"] = sum(golds) / n
        out["right_fact_rate"] = (
            sum(bool(world.right_fact(p[-1]["content"], a.text)) for p, a in zip(prompts, answers, strict=True)) / n
        )
    return out, [
        (p[-1]["content"], a, g) for p, a, g in zip(prompts, answers, golds or [None] * len(answers), strict=True)
    ]


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
