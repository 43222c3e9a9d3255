"""`rlhf chat`: talk to any stage's causal LM through its chat template, tokens streamed as they are generated.

    rlhf chat runs/tiny/ppo/final                                   # interactive: /world lists the toy world, /quit exits
    rlhf chat runs/tiny/sft/final --prompt "what does the owl eat?"  # one answer, for scripts
    rlhf chat runs/tiny/sft/final --temperature 0.7                 # sampled answers instead of greedy ones

Answers are greedy by default, as the report's evaluation (`rlhf eval`) is, so what chat shows of a stage is what the
report measured. In a toy-world run, /world prints the world's animals and their facts (the run's data/toy/world.json).

A LoRA adapter folder (adapter_config.json) loads as its base model plus the adapter. A reward model (a sequence
classifier) cannot chat: `rlhf reward inspect` is the tool for it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from rlhf_cli.models.generation import generate
from rlhf_cli.models.modeling import (
    REWARD_MODEL,
    check_model_kind,
    end_of_turn_ids,
    inference_device,
    load_causal_lm,
    load_tokenizer,
)
from rlhf_cli.runtime import precision as precisions
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.layout import RunLayout, enclosing_run, resolve_in_run

HELP = (
    "Type a message; /world lists the toy world's animals and facts, /reset clears the history, /help shows this, "
    "/quit (or Ctrl-D) exits."
)
WORLD_COLUMNS = ("colour", "food", "home", "friend")  # the facts of each animal in world.json (rlhf_cli.data.toy)


def load_chat_model(model_dir: str):
    """(model, tokenizer) for a causal-LM folder, a LoRA adapter folder or a hub id; UserError for anything else."""

    path = Path(model_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"{model_dir} is a file; give a model folder (one with config.json) or an adapter folder.")
    adapter = path / "adapter_config.json"
    if path.is_dir() and adapter.exists():
        settings = json.loads(adapter.read_text(encoding="utf-8"))
        if settings.get("task_type") == "SEQ_CLS":
            raise _not_causal(model_dir)
        # peft stores the base as an absolute path (it loads from any working directory); in a moved run it is found
        # at the same place in the run
        base = resolve_in_run(settings.get("base_model_name_or_path"), enclosing_run(path) or path)
        if not base:
            raise UserError(f"{adapter} names no base model (base_model_name_or_path); cannot load the adapter.")
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_causal_lm(base), str(path))
        tok_ref = str(path) if _has_tokenizer(path) else base
        return model.to(inference_device()), load_tokenizer(tok_ref)
    if path.is_dir():
        config = path / "config.json"
        if not config.exists():
            raise UserError(
                f"{model_dir} is not a model folder (no config.json or adapter_config.json); "
                "give a stage's final/ folder, e.g. runs/tiny/sft/final."
            )
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
        if any("SequenceClassification" in a for a in architectures):
            raise _not_causal(model_dir)
    elif check_model_kind(model_dir, None, "rlhf chat") == REWARD_MODEL:  # a hub id whose config is cached
        raise _not_causal(model_dir)
    return load_causal_lm(model_dir).to(inference_device()), load_tokenizer(model_dir)


def _not_causal(model_dir: str) -> UserError:
    return UserError(
        f"{model_dir} is a reward model (a sequence classifier); chat needs a causal LM such as "
        f"runs/<name>/sft/final — to look at a reward model use `rlhf reward inspect {model_dir}`."
    )


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def reply(
    model,
    tokenizer,
    messages: list[dict],
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    write: Callable[[str], None],
    precision: str = "auto",
) -> str:
    """Generate the assistant's next turn for `messages`, calling `write` with each piece of text as it is decoded."""
    import torch
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            if text:
                write(text)

    enc = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    device = next(model.parameters()).device
    # Stop at the end of the turn, and also if the model starts the next user turn itself.
    stops = [*end_of_turn_ids(tokenizer), *_token_ids(tokenizer, ["<|user|>"])]
    # An answer never holds padding or another role's marker (an undertrained model sometimes emits them).
    suppress = [tokenizer.pad_token_id, *_token_ids(tokenizer, ["<|system|>", "<|assistant|>"])]
    model.eval()
    with torch.no_grad(), precisions.inference(model, precision):
        out = generate(
            model,
            enc["input_ids"].to(device),
            enc["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
            min_new_tokens=1,  # never an empty turn
            suppress_tokens=suppress,
            streamer=Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True),
        )
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    new = [t for t in new if t not in stops and t != tokenizer.pad_token_id]
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def _token_ids(tokenizer, tokens: list[str]) -> list[int]:
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in tokens if t in vocab]


def _fit_context(model, tokenizer, messages: list[dict], max_new_tokens: int, prefix: list[dict] = ()) -> list[dict]:
    """Drop the oldest exchanges until `prefix` (the system message) + the prompt and the answer fit the context."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None) or getattr(
        getattr(model, "config", None), "n_positions", None
    )
    if not limit:
        return messages
    while len(messages) > 1:
        ids = tokenizer.apply_chat_template(
            [*prefix, *messages], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        if len(ids) + max_new_tokens <= limit:
            break
        messages = messages[2:] if len(messages) > 2 else messages[1:]
    return messages


def chat(
    model_dir: str,
    prompt: str | None = None,
    temperature: float = 0.0,
    top_p: float = 0.95,
    max_new_tokens: int = 128,
    precision: str = "auto",
    system: str | None = None,
    *,
    ask: Callable[[str], str] = input,
) -> list[dict]:
    """Chat with a model; returns the conversation. With `prompt`, print only its answer and return. `system`: a
    system message before every conversation (kept when the history is cleared or cut to fit the context).
    `temperature` 0 (the default) answers greedily, as the report's evaluation does; above 0 it samples.

    `ask` reads one user line (raises EOFError at the end of input); tests pass scripted input here.
    """
    if temperature < 0 or not 0 < top_p <= 1 or max_new_tokens < 1:
        raise UserError("Use --temperature >= 0 (0 = greedy), 0 < --top-p <= 1 and --max-new-tokens >= 1.")
    if precision not in ("auto", "bf16", "fp32"):
        raise UserError(f"--precision {precision!r}: use auto, bf16 or fp32.")
    model, tokenizer = load_chat_model(model_dir)
    settings = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "precision": precision}

    def write(text: str):
        sys.stdout.write(text)
        sys.stdout.flush()

    first = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        messages = [*first, {"role": "user", "content": prompt}]
        answer = reply(model, tokenizer, messages, write=write, **settings)
        write("\n")
        return [*messages, {"role": "assistant", "content": answer}]

    world = world_file(model_dir)
    decoding = "greedy, as the report's evaluation" if temperature == 0 else f"sampling at temperature {temperature}"
    print(f"Chatting with {model_dir}{_stage_note(model_dir)}; answers {decoding}.", file=sys.stderr)
    if world is not None:
        print(
            f"It lives in a toy world of {_world_size(world)} animals: /world lists them and their facts.",
            file=sys.stderr,
        )
    print(HELP, file=sys.stderr)
    history: list[dict] = []
    while True:
        try:
            line = ask("you> ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/help":
            print(HELP, file=sys.stderr)
            continue
        if text == "/world":
            show_world(world)
            continue
        if text == "/reset":
            history = []
            print("(history cleared)", file=sys.stderr)
            continue
        if text.startswith("/"):
            print(f"Unknown command {text}. {HELP}", file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        history = _fit_context(model, tokenizer, history, max_new_tokens, prefix=first)
        write("bot> ")
        answer = reply(model, tokenizer, [*first, *history], write=write, **settings)
        write("\n")
        history.append({"role": "assistant", "content": answer})
    return history


def _stage_note(model_dir: str) -> str:
    lineage = Path(model_dir) / "lineage.json"
    try:
        return f" (stage: {json.loads(lineage.read_text(encoding='utf-8'))['stage']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def world_file(model_dir: str) -> Path | None:
    """The toy world a model of a run learned: world.json in the data/toy/ folder of the nearest run folder above it
    (a later round's run shares its first round's world); None for a model outside a toy-world run."""
    for folder in Path(model_dir).absolute().parents:
        path = RunLayout(folder).toy / "world.json"
        if path.is_file():
            return path
    return None


def _world_size(path: Path) -> int:
    return len(_read_world(path))


def _read_world(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))["facts"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not a toy world's world.json ({err}); `rlhf data toy` writes one.") from None


def show_world(path: Path | None) -> None:
    """One table of the toy world: each animal and its facts, as world.json holds them."""
    if path is None:
        print(
            "This model is not in a toy-world run (no data/toy/world.json in a folder above it), so there is no "
            "world to show.",
            file=sys.stderr,
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"The toy world ({path})")
    for column in ("animal", *WORLD_COLUMNS):
        table.add_column(column)
    for animal, facts in sorted(_read_world(path).items()):
        table.add_row(animal, *(str(facts.get(c, "")) for c in WORLD_COLUMNS))
    Console(file=sys.stdout).print(table)
