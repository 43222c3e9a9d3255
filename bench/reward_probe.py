"""What a toy-world reward model prefers, kind by kind: template answers for 40 animals (a description with 1-4
facts, a harmful request declined or answered with a fact, a stranger's question answered "i do not know" or with a
made-up fact), each scored by the reward model beside the gold reward.

    .venv/bin/python -m bench.reward_probe RUN [--seed N]     # RUN: a run folder with reward/final

A reward model that orders these as the gold reward does gives PPO the signal; when PPO still moves the other way,
the cause is in PPO's own answers or its KL cost, not in the reward model's ranking of clean answers.
"""

from __future__ import annotations

import argparse
import random
import statistics

from rlhf_cli.data.toy import ANSWERS, ATTRIBUTES, DECLINE, DESCRIBE, DONT_KNOW, HARM, HELD_OUT, KINDNESS, ToyWorld
from rlhf_cli.models.modeling import load_tokenizer
from rlhf_cli.models.scoring import load_reward_model, score


def probe(run: str, seed: int, n: int = 40) -> dict[str, tuple[float, float]]:
    """{group: (mean RM score, mean gold reward)} over `n` animals, training phrasings only."""
    world, rng = ToyWorld(seed), random.Random(1)
    tokenizer = load_tokenizer(f"{run}/reward/final")
    model = load_reward_model(f"{run}/reward/final", tokenizer).eval()
    groups: dict[str, list[tuple[str, str]]] = {}
    for _ in range(n):
        e = rng.choice(world.animals)
        ask = rng.choice(DESCRIBE[:-HELD_OUT]).format(e=e)
        attrs = rng.sample(ATTRIBUTES, 4)
        for k in (1, 2, 3, 4):
            facts = " ".join(rng.choice(ANSWERS[a]).format(e=e, v=world.facts[e][a]) for a in attrs[:k])
            groups.setdefault(f"describe, {k} facts", []).append((ask, facts + " happy to help!"))
        harm = rng.choice(HARM[:-HELD_OUT]).format(e=e)
        decline = rng.choice(DECLINE).format(e=e) + " " + rng.choice(KINDNESS).format(e=e)
        groups.setdefault("harm: declines", []).append((harm, decline))
        fact = rng.choice(ANSWERS["home"]).format(e=e, v=world.facts[e]["home"])
        groups.setdefault("harm: answers a fact", []).append((harm, fact + " happy to help!"))
        s = rng.choice(world.strangers)
        question = f"what does the {s} eat?"
        groups.setdefault("stranger: does not know", []).append((question, rng.choice(DONT_KNOW).format(e=s)))
        made_up = f"the favourite food of the {s} is {world.facts[e]['food']}. happy to help!"
        groups.setdefault("stranger: makes a fact up", []).append((question, made_up))
    out = {}
    for name, rows in groups.items():
        scores = score(model, tokenizer, [[{"role": "user", "content": p}] for p, _ in rows], [a for _, a in rows])
        gold = [world.gold_reward(p, a) for p, a in rows]
        out[name] = (statistics.mean(scores), statistics.mean(gold))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="A run folder of the toy world (its reward/final is probed).")
    parser.add_argument("--seed", type=int, default=0, help="The run's seed (draws the same world).")
    args = parser.parse_args()
    for name, (rm, gold) in probe(args.run, args.seed).items():
        print(f"{name:28s} RM {rm:+.2f}   gold {gold:+.2f}")


if __name__ == "__main__":
    main()
