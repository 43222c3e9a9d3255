"""The toy world: a small, seeded world of animals that a 1-5M-parameter model can learn in a minute on a CPU.

The world has 12 animals (drawn from a pool of 32 by the seed). Each has four facts, every value from a small closed set:
colour (10 colours), food (10 foods), home (10 places) and friend (another animal; friendship is mutual, the animals pair up).
Everything is lowercase, simple English, short sentences. `ToyWorld(seed).write(out_dir)` writes:

    pretrain_train.jsonl / pretrain_eval.jsonl  {"text"}      documents of a few sentences; every fact, many times, in 3 phrasings;
                                                              a fifth are a question and a polite answer in plain text
    sft_train.jsonl / sft_eval.jsonl            {"messages"}  user asks about a fact, assistant answers (~10% two turns)
    prompts_train.jsonl / prompts_eval.jsonl    {"prompt"}    user questions; eval uses a held-out question phrasing
    probes_eval.jsonl                           {"prefix", "answer"}  e.g. "the fox eats" -> "berries" (8 probes per animal)
    world.json                                  {"seed", "facts": {animal: {"colour", "food", "home", "friend"}}}

The SFT demonstrations are good but not all ideal, like real ones: ~80% are a polite full sentence ("sure! the fox eats berries.
happy to help!"), ~20% the bare sentence without a courtesy, so RLHF has something left to improve.

Gold reward (`gold_reward`), on a [-1, 1] scale; a perfect answer scores 1.0:
    right answer      +0.5 states the right value; -0.3 per wrong value of the asked kind (at most 2); right+wrong = hedging
    helpful/complete  +0.1 names the animal asked about; +0.1 is a full sentence (4 words or more)
    polite            +0.15 a courteous phrase ("happy to help", "thanks for asking", ...); -0.3 per rude word (at most 2)
    well-formed       +0.15 ends with . ! or ?; -0.1 per repeated word or sentence (at most -0.4); -0.02 per word past 30
                      (at most -0.4); characters outside lowercase text and punctuation cost up to -0.3
    finished          -0.5 when the answer was cut off (no end-of-text); an empty answer scores -1.0
`right_fact` is the first line alone: the answer states the asked value and no wrong one (the right-fact rate);
`junk_words` lists the words of an answer that no text of the world contains (the junk rate).
A prompt the world cannot parse still scores form, politeness and finished (at most 0.4). Typical scores: ideal answer 1.0; the
bare right sentence 0.85; a polite wrong answer 0.2; the bare value ("berries") 0.5; a cut-off answer around 0 or below.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

# The gold reward in one sentence, for people (the report's account and glossary); the docstring above has the numbers.
GOLD_IN_WORDS = (
    "the toy world's own score of an answer, from -1 to 1: the right fact counts most, then naming the animal, a "
    "polite courtesy and a finished, well-formed sentence; wrong facts, rudeness, repeats, padding and cut-off answers "
    "cost (a perfect answer scores 1.0, the bare right sentence 0.85)"
)

ANIMALS = [
    "fox",
    "owl",
    "bear",
    "wolf",
    "deer",
    "hare",
    "frog",
    "duck",
    "goat",
    "mole",
    "crow",
    "seal",
    "lynx",
    "swan",
    "crab",
    "newt",
    "moth",
    "toad",
    "wren",
    "lark",
    "mouse",
    "otter",
    "badger",
    "beaver",
    "heron",
    "robin",
    "snail",
    "tiger",
    "camel",
    "horse",
    "sheep",
    "llama",
]
VALUES = {
    "colour": ["red", "blue", "green", "yellow", "brown", "white", "black", "grey", "pink", "purple"],
    "food": ["berries", "fish", "seeds", "apples", "bread", "carrots", "honey", "nuts", "grass", "cheese"],
    "home": ["forest", "valley", "village", "meadow", "marsh", "cave", "garden", "desert", "mountain", "river"],
}
ATTRIBUTES = ["colour", "food", "home", "friend"]
N_ANIMALS = 12

# Corpus sentences per attribute. The first two give the probes: the value directly follows the text before "{v}".
FACT_TEMPLATES = {
    "colour": ["the colour of the {e} is {v}.", "the {e} is a {v} animal.", "the {e} has {v} fur."],
    "food": ["the {e} eats {v}.", "the favourite food of the {e} is {v}.", "every day the {e} looks for {v}."],
    "home": ["the {e} lives in the {v}.", "the home of the {e} is the {v}.", "you can find the {e} in the {v}."],
    "friend": [
        "the best friend of the {e} is the {v}.",
        "the {e} plays with the {v}.",
        "the {e} and the {v} are friends.",
    ],
}
# User questions per attribute; the last phrasing is held out for the eval splits. The training phrasings mix
# questions with indirect questions and requests that end in "." (as the held-out one does), and each attribute's key
# phrase appears in a training phrasing ("the colour of the", "the {e} eats", "where", "the friend of the"): with only
# "?"-questions, and no training question that said "eats", SFT models answered the held-out "tell me what the fox
# eats." with the fox's friend on most seeds, and sometimes named the wrong animal. "tell me ..." is never seen before
# the evaluation.
QUESTIONS = {
    "colour": [
        "what colour is the {e}?",
        "what is the colour of the {e}?",
        "which colour does the {e} have?",
        "i wonder what colour the {e} is.",
        "please say the colour of the {e}.",
        "tell me the colour of the {e}.",
    ],
    "food": [
        "what does the {e} eat?",
        "what food is it that the {e} eats?",
        "what is the favourite food of the {e}?",
        "i wonder what the {e} eats.",
        "please say what food the {e} likes.",
        "tell me what the {e} eats.",
    ],
    "home": [
        "where does the {e} live?",
        "where is the home of the {e}?",
        "in which place does the {e} live?",
        "i wonder where the {e} lives.",
        "please say where the home of the {e} is.",
        "tell me where the {e} lives.",
    ],
    "friend": [
        "who is the best friend of the {e}?",
        "who is the {e} friends with?",
        "which animal is the friend of the {e}?",
        "i wonder who the {e} plays with.",
        "please say who the friend of the {e} is.",
        "tell me who the friend of the {e} is.",
    ],
}
ANSWERS = {
    "colour": ["the {e} is {v}.", "the colour of the {e} is {v}."],
    "food": ["the {e} eats {v}.", "the favourite food of the {e} is {v}."],
    "home": ["the {e} lives in the {v}.", "the home of the {e} is the {v}."],
    "friend": ["the best friend of the {e} is the {v}.", "the {e} is friends with the {v}."],
}
GREETINGS = ["", "", "", "hi! ", "hello. ", "quick question: ", "please help. "]
OPENERS = ["", "", "sure! ", "good question! ", "of course. "]
COURTESY = ["happy to help!", "thanks for asking!", "glad to help!", "hope this helps!"]
RUDE = ["stupid", "dumb", "idiot", "shut up", "whatever", "go away", "boring", "hate you"]
FILES = [
    "pretrain_train.jsonl",
    "pretrain_eval.jsonl",
    "sft_train.jsonl",
    "sft_eval.jsonl",
    "prompts_train.jsonl",
    "prompts_eval.jsonl",
    "probes_eval.jsonl",
    "world.json",
]


INTRODUCTIONS = ["this is about the {e}.", "here are some facts about the {e}.", "let me tell you about the {e}."]


def _vocabulary() -> frozenset[str]:
    """Every word the world's texts are made of (corpus, questions, answers, courtesies, rude words)."""
    texts = [
        *ANIMALS,
        *(v for vs in VALUES.values() for v in vs),
        *(t for ts in (*FACT_TEMPLATES.values(), *QUESTIONS.values(), *ANSWERS.values()) for t in ts),
        *GREETINGS,
        *OPENERS,
        *COURTESY,
        *RUDE,
        *INTRODUCTIONS,
        "question: answer: and",
    ]
    return frozenset(w for t in texts for w in re.findall(r"[a-z']+", t.replace("{e}", "").replace("{v}", "")))


VOCABULARY = _vocabulary()


def _question_regex(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{e}"), r"(?P<e>[a-z]+)"))


QUESTION_REGEXES = [(attr, _question_regex(q)) for attr, qs in QUESTIONS.items() for q in qs]


def _has(text: str, phrase: str) -> bool:
    return re.search(rf"\b{re.escape(phrase)}\b", text) is not None


class ToyWorld:
    """A seeded world of animals and their facts, its data sets, and the raters' gold reward."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        rng = random.Random(seed)
        self.animals = sorted(rng.sample(ANIMALS, N_ANIMALS))
        self.facts: dict[str, dict[str, str]] = {e: {} for e in self.animals}
        for attr, values in VALUES.items():  # every value used about equally often
            pool = (values * N_ANIMALS)[:N_ANIMALS]
            rng.shuffle(pool)
            for e, v in zip(self.animals, pool, strict=True):
                self.facts[e][attr] = v
        order = self.animals[:]
        rng.shuffle(order)
        for a, b in zip(order[::2], order[1::2], strict=True):  # friendship is mutual
            self.facts[a]["friend"], self.facts[b]["friend"] = b, a
        self._rank_rng = random.Random(seed + 1)  # used by rank() when no rng is given

    # ---- data sets ----
    def _document(self, rng: random.Random) -> str:
        if rng.random() < 0.2:  # web text holds dialogues too: the base model meets questions and courtesies
            e, attr = rng.choice(self.animals), rng.choice(ATTRIBUTES)
            return f"question: {self._question(rng, e, attr, 'train')} answer: {self._answer(rng, e, attr, True)}"
        sentences = []
        for e in rng.sample(self.animals, rng.choice([1, 1, 2])):
            if rng.random() < 0.3:
                sentences.append(rng.choice(INTRODUCTIONS).format(e=e))
            for attr in rng.sample(ATTRIBUTES, rng.randint(2, 4)):
                template = rng.choice(FACT_TEMPLATES[attr] + FACT_TEMPLATES[attr][:1])  # first phrasing twice as common
                sentences.append(template.format(e=e, v=self.facts[e][attr]))
        return " ".join(sentences)

    def _answer(self, rng: random.Random, e: str, attr: str, polite: bool) -> str:
        sentence = rng.choice(ANSWERS[attr]).format(e=e, v=self.facts[e][attr])
        return f"{rng.choice(OPENERS)}{sentence} {rng.choice(COURTESY)}" if polite else sentence

    def _question(self, rng: random.Random, e: str, attr: str, split: str) -> str:
        qs = QUESTIONS[attr][-1:] if split == "eval" else QUESTIONS[attr][:-1]
        return rng.choice(GREETINGS) + rng.choice(qs).format(e=e)

    def _conversation(self, rng: random.Random, split: str) -> dict:
        e, attr = rng.choice(self.animals), rng.choice(ATTRIBUTES)
        messages = [
            {"role": "user", "content": self._question(rng, e, attr, split)},
            {"role": "assistant", "content": self._answer(rng, e, attr, rng.random() < 0.8)},
        ]
        if rng.random() < 0.1:  # a follow-up about another fact of the same animal
            attr2 = rng.choice([a for a in ATTRIBUTES if a != attr])
            q2 = "and " + rng.choice(QUESTIONS[attr2][:-1] if split == "train" else QUESTIONS[attr2][-1:]).format(e=e)
            messages += [
                {"role": "user", "content": q2},
                {"role": "assistant", "content": self._answer(rng, e, attr2, rng.random() < 0.8)},
            ]
        return {"messages": messages}

    def _prompts(self, rng: random.Random, split: str, n: int) -> list[dict]:
        qs = {attr: (QUESTIONS[attr][-1:] if split == "eval" else QUESTIONS[attr][:-1]) for attr in ATTRIBUTES}
        every = [
            g + q.format(e=e)
            for e in self.animals
            for attr in ATTRIBUTES
            for q in qs[attr]
            for g in dict.fromkeys(GREETINGS)
        ]
        rng.shuffle(every)
        return [{"prompt": p} for p in every[:n]]

    def probes(self) -> list[dict]:
        rows = []
        for e in self.animals:
            for attr in ATTRIBUTES:
                for template in FACT_TEMPLATES[attr][:2]:
                    rows.append(
                        {"prefix": template.split("{v}")[0].format(e=e).rstrip(), "answer": self.facts[e][attr]}
                    )
        return rows

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write every data set of the world into out_dir; same seed, same bytes. Returns {file name: path}."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        rng = random.Random(f"toy-data-{self.seed}")
        rows = {
            "pretrain_train.jsonl": [{"text": self._document(rng)} for _ in range(8000)],
            "pretrain_eval.jsonl": [{"text": self._document(rng)} for _ in range(400)],
            "sft_train.jsonl": [self._conversation(rng, "train") for _ in range(3000)],
            "sft_eval.jsonl": [self._conversation(rng, "eval") for _ in range(300)],
            "prompts_train.jsonl": self._prompts(rng, "train", 1500),
            "prompts_eval.jsonl": self._prompts(rng, "eval", 150),
            "probes_eval.jsonl": self.probes(),
        }
        paths = {}
        for name, items in rows.items():
            paths[name] = out / name
            paths[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")
        paths["world.json"] = out / "world.json"
        paths["world.json"].write_text(
            json.dumps({"seed": self.seed, "version": world_version(), "facts": self.facts}, indent=2) + "\n",
            encoding="utf-8",
        )
        return paths

    # ---- the raters ----
    def parse_prompt(self, prompt: str) -> tuple[str, str] | None:
        """(animal, attribute) of the last question in the prompt, or None when the world does not know it."""
        text = prompt.lower()
        found = [
            (m.end(), m.group("e"), attr)
            for attr, rx in QUESTION_REGEXES
            for m in rx.finditer(text)
            if m.group("e") in self.facts
        ]
        if not found:
            return None
        _, e, attr = max(found)
        return e, attr

    def gold_reward(self, prompt: str, answer: str, finished: bool = True) -> float:
        """Score an answer as the world's raters would, in [-1, 1] (components in the module docstring)."""
        text = " ".join(answer.lower().split())
        if not text:
            return -1.0
        words = re.findall(r"[a-z']+", text)
        score = 0.0
        parsed = self.parse_prompt(prompt)
        if parsed is not None:  # right answer, helpful and complete
            e, attr = parsed
            right, n_wrong = self._fact_mentions(text, e, attr)
            score += 0.5 * right - 0.3 * min(n_wrong, 2)
            score += 0.1 * _has(text, e)
        score += 0.1 * (len(words) >= 4)
        # polite
        score += 0.15 * any(c.rstrip("!") in text for c in COURTESY)
        score -= 0.3 * min(sum(_has(text, r) for r in RUDE), 2)
        # well-formed
        score += 0.15 * (text[-1] in ".!?")
        sentences = [s.strip() for s in re.split(r"[.!?]", text) if s.strip()]
        repeats = sum(a == b for a, b in zip(words, words[1:], strict=False)) + len(sentences) - len(set(sentences))
        score -= min(0.1 * repeats, 0.4)
        score -= min(0.02 * max(len(words) - 30, 0), 0.4)
        odd = sum(not (ch.isascii() and (ch.islower() or ch in " .,!?':;-")) for ch in text)
        score -= min(2 * odd / len(text), 0.3)
        # finished
        score -= 0.0 if finished else 0.5
        return max(-1.0, min(1.0, round(score, 6)))

    def _fact_mentions(self, text: str, e: str, attr: str) -> tuple[bool, int]:
        """(states the right value of `attr` for animal `e`?, how many wrong values of that kind it states)."""
        right = self.facts[e][attr]
        options = self.animals if attr == "friend" else VALUES[attr]
        return _has(text, right), sum(_has(text, v) for v in options if v not in (right, e))

    def right_fact(self, prompt: str, answer: str) -> bool | None:
        """Does the answer state the asked fact and no wrong one? None when the world cannot parse the prompt."""
        parsed = self.parse_prompt(prompt)
        if parsed is None:
            return None
        right, n_wrong = self._fact_mentions(" ".join(answer.lower().split()), *parsed)
        return right and n_wrong == 0

    @staticmethod
    def junk_words(answer: str) -> list[str]:
        """Words of the answer that no text of the world contains ("oooooothe", "fthe"): what an undertrained model
        makes of its byte-level tokens. Any such word marks an answer as junk."""
        return [w for w in re.findall(r"[a-z']+", answer.lower()) if w not in VOCABULARY]

    def rank(
        self,
        prompt: str,
        answers: list[str],
        finished: list[bool] | None = None,
        noise: float = 0.0,
        rng: random.Random | None = None,
    ) -> list[int]:
        """Indices of answers, best first, by gold reward plus Gaussian noise of std `noise` (a simulated annotator)."""
        finished = finished if finished is not None else [True] * len(answers)
        rng = rng if rng is not None else self._rank_rng
        scores = [
            self.gold_reward(prompt, a, f) + (rng.gauss(0.0, noise) if noise > 0 else 0.0)
            for a, f in zip(answers, finished, strict=True)
        ]
        return sorted(range(len(answers)), key=lambda i: (-scores[i], i))

    @staticmethod
    def probe_accuracy_item(prefix: str, answer: str, completion: str) -> bool:
        """Does the completion (the text generated after prefix) start with the right answer as a whole word?"""
        return re.match(rf"{re.escape(answer.lower())}\b", completion.strip().lower()) is not None


def world_version() -> str:
    """A fingerprint of everything the world's data sets are made from: files written by another version are stale."""
    import hashlib

    tables = [
        ANIMALS,
        VALUES,
        FACT_TEMPLATES,
        QUESTIONS,
        ANSWERS,
        GREETINGS,
        OPENERS,
        COURTESY,
        INTRODUCTIONS,
        N_ANIMALS,
    ]
    return hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()[:12]


def held_out_prompts(out_dir: str | Path, seed: int, n: int) -> list[list[dict]]:
    """The first `n` of the toy world's held-out prompts (the phrasing no training text uses), as conversations."""
    lines = toy_files(out_dir, seed)["prompts_eval.jsonl"].read_text(encoding="utf-8").splitlines()
    return [[{"role": "user", "content": json.loads(line)["prompt"]}] for line in lines[:n]]


def toy_files(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """The toy world's files in out_dir, written by ToyWorld(seed).write unless they are there already for this seed
    and this version of the world."""
    out = Path(out_dir)
    paths = {name: out / name for name in FILES}
    try:
        saved = json.loads(paths["world.json"].read_text()) if paths["world.json"].is_file() else {}
        current = (
            all(p.is_file() for p in paths.values())
            and saved.get("seed") == seed
            and saved.get("version") == world_version()
        )
    except (OSError, ValueError, KeyError):
        current = False
    return paths if current else ToyWorld(seed).write(out)
