"""Checkpoints shaped like the ones people bring from the hub, built locally (no network): the project's "real model"
tests (tests/test_foreign.py) and the GPU bench (bench/gpu.py) start from them.

    python -m bench.foreign --family qwen2.5 --out /tmp/qwen     # a small Qwen2.5-shaped checkpoint
    python -m bench.foreign --family qwen2.5 --size 0.5b --out /tmp/qwen-0.5b   # Qwen2.5-0.5B's shape (random weights)
    python -m bench.foreign --seeds 0-4 --out bench/out/foreign     # tests/test_foreign.py's pipeline, every family
                                                                    # and seed: SFT finished, PPO's gold gain interval

Each family keeps what matters to a pipeline that did not build the model: the architecture class, the special-token
layout of the real tokenizer (names, which one is eos, bos and pad), the real chat template (TRL ships them under
`trl/chat_templates/`), tied or untied embeddings, and the dtype on disk (bf16 where the hub's checkpoints are bf16).
The tokenizer is a byte-level BPE trained on the toy world's corpus, so a tiny model can learn the world in minutes.

| family  | architecture | chat template          | end of an assistant turn | eos             | pad   | on disk |
|---------|--------------|------------------------|--------------------------|-----------------|-------|---------|
| qwen2.5 | Qwen2, tied  | Qwen2.5 (ChatML)       | <|im_end|>               | <|endoftext|>   | = eos | bf16    |
| llama3  | Llama, untied| Llama 3                | <|eot_id|>               | <|end_of_text|> | none  | bf16    |
| gpt2    | GPT-2, tied  | none                   | (the project's template) | <|endoftext|>   | none  | fp32    |
| phi3    | Phi-3        | Phi-3                  | <|end|>                  | <|endoftext|>   | = eos | bf16    |
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# The tiny recipe from a foreign checkpoint (64 wide, 2 layers): a shorter pre-training and 800 ranked prompts, ~50 s a
# family on 2 cores. tests/test_foreign.py and `--seeds` run it.
PIPELINE_SETTINGS = [
    "pretrain.training.max_steps=300",
    "pretrain.probes=false",
    "sft.eval_prompts=32",
    "feedback.num_prompts=800",
    # These checkpoints learn the world from 300 steps, so their reward models are weaker than the tiny recipe's (gold
    # order ~0.71 against 0.75-0.85); at the recipe's kl_coef 0.3, PPO over-optimised them on the world of four kinds
    # (seed 0: GPT-2 +0.079 [-0.001, +0.156], answers that declined plain questions and ran past 40 tokens). A weaker
    # reward model wants a stronger KL penalty.
    "ppo.kl_coef=0.5",
]


@dataclass(frozen=True)
class Family:
    name: str
    specials: tuple[str, ...]  # added special tokens, in the real tokenizer's order
    bos: str | None
    eos: str
    pad: str | None
    template: str | None  # a file of trl/chat_templates, or None
    dtype: str  # on disk
    add_bos: bool = False  # the tokenizer prepends bos to every text (Llama 3)


FAMILIES = {
    "qwen2.5": Family(
        "qwen2.5", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), None, "<|endoftext|>", "<|endoftext|>",
        "qwen2_5.jinja", "bfloat16",
    ),
    "llama3": Family(
        "llama3",
        ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "<|begin_of_text|>", "<|end_of_text|>", None, "llama3.jinja", "bfloat16", add_bos=True,
    ),
    "gpt2": Family("gpt2", ("<|endoftext|>",), "<|endoftext|>", "<|endoftext|>", None, None, "float32"),
    "phi3": Family(
        "phi3", ("<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>"), None, "<|endoftext|>",
        "<|endoftext|>", "phi3.jinja", "bfloat16",
    ),
}  # fmt: skip

# (hidden, layers, heads, kv heads, intermediate, vocabulary or None for the tokenizer's): "tiny" trains on a CPU in
# seconds; "0.5b" is Qwen2.5-0.5B's shape, its embedding table included (the tokenizer uses the first rows).
SIZES = {"tiny": (64, 2, 4, 2, 160, None), "0.5b": (896, 24, 14, 2, 4864, 151936)}


def trl_template(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / name).read_text(encoding="utf-8")


def build_tokenizer(family: Family, texts, vocab_size: int = 600):
    """A byte-level BPE with the family's special tokens, eos/bos/pad and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(family.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    if family.add_bos:  # Llama 3's tokenizer prepends <|begin_of_text|> to every text it encodes
        bos_id = tok.token_to_id(family.bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A {family.bos} $B", special_tokens=[(family.bos, bos_id)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=family.eos, bos_token=family.bos, pad_token=family.pad
    )
    if family.template:
        fast.chat_template = trl_template(family.template)
    fast.model_max_length = 32768
    return fast


def model_config(family: Family, tokenizer, size: str = "tiny"):
    hidden, layers, heads, kv, inter, vocab = SIZES[size]
    ids = {
        "vocab_size": max(len(tokenizer), vocab or 0),
        "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if family.name == "qwen2.5":
        from transformers import Qwen2Config

        return Qwen2Config(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
            intermediate_size=inter, max_position_embeddings=1024, tie_word_embeddings=True, rope_theta=1e6, **ids,
        )  # fmt: skip
    if family.name == "llama3":
        from transformers import LlamaConfig

        return LlamaConfig(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
            intermediate_size=inter, max_position_embeddings=1024, tie_word_embeddings=False, rope_theta=5e5, **ids,
        )  # fmt: skip
    if family.name == "phi3":
        from transformers import Phi3Config

        return Phi3Config(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
            intermediate_size=inter, max_position_embeddings=1024, original_max_position_embeddings=1024,
            tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, **ids,
        )  # fmt: skip
    from transformers import GPT2Config

    return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=1024, n_inner=inter, **ids)


def build(family: str, out: str | Path, *, size: str = "tiny", seed: int = 0, texts=None) -> Path:
    """Write a checkpoint of `family` (FAMILIES) to `out`: config, safetensors in the family's dtype, tokenizer with its
    special tokens and chat template, generation_config as the hub's base checkpoints have it. Returns `out`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    fam = FAMILIES[family]
    if texts is None:
        texts = toy_corpus(seed)
    tokenizer = build_tokenizer(fam, texts)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(fam, tokenizer, size))
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )  # a base checkpoint's: it stops at eos only
    out = Path(out)
    model.to(getattr(torch, fam.dtype)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "family.json").write_text(json.dumps({"family": family, "size": size}) + "\n")
    return out


def toy_corpus(seed: int = 0) -> list[str]:
    """The toy world's pre-training documents (what the tokenizer is trained on)."""
    import tempfile

    from rlhf_cli.data.toy import ToyWorld

    with tempfile.TemporaryDirectory() as tmp:
        path = ToyWorld(seed).write(tmp)["pretrain_train.jsonl"]
        return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def pipeline_over_seeds(families: list[str], seeds: list[int], out: Path) -> list[dict]:
    """tests/test_foreign.py's pipeline from each family's checkpoint on each seed (the world, the checkpoint's init and
    the training all drawn from it), as a user runs the CLI; one row per run, written to out/foreign-seeds.json."""
    from bench.seeds import _read, rlhf_command

    rows = []
    for family in families:
        for seed in seeds:
            folder = out / f"{family}-seed-{seed}"
            source = build(family, folder / "checkpoint", seed=seed)
            sets = [f"seed={seed}", f"pretrain.init_from={source}", *PIPELINE_SETTINGS]
            args = ["pipeline", "--recipe", "tiny", "--overwrite", "-o", str(folder / "run")]
            args += ["--stages", "pretrain,sft,sample,label,reward,ppo", *(f"--set={s}" for s in sets)]
            start = time.perf_counter()
            with open(folder / "pipeline.log", "w") as log:
                code = subprocess.run(rlhf_command(*args), stdout=log, stderr=subprocess.STDOUT).returncode
            ppo = _read(folder / "run" / "ppo" / "eval.json")
            gain = ppo.get("gold_gain") or {}
            row = {
                "family": family,
                "seed": seed,
                "exit_code": code,
                "sft_finished": _read(folder / "run" / "sft" / "eval.json").get("finished_rate"),
                "gain": gain.get("mean"),
                "gain_low": gain.get("low"),
                "gain_high": gain.get("high"),
                "seconds": round(time.perf_counter() - start, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            (out / "foreign-seeds.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), help="One family (default with --seeds: all).")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seeds", help="Run the pipeline from each family on these seeds (0-4, or 0,2) instead.")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.seeds:
        from bench.seeds import parse_seeds

        families = [args.family] if args.family else sorted(FAMILIES)
        rows = pipeline_over_seeds(families, parse_seeds(args.seeds), Path(args.out))
        for family in families:
            own = [r for r in rows if r["family"] == family]
            lows = [r["gain_low"] for r in own if r["gain_low"] is not None]
            print(
                f"{family}: PPO gold gain > 0 (interval) on {sum(low > 0 for low in lows)} of {len(own)} seeds; "
                f"worst interval low {min(lows, default=float('nan')):+.3f}; SFT finished at worst "
                f"{min((r['sft_finished'] or 0) for r in own):.2f}"
            )
        return
    if not args.family:
        parser.error("--family is needed to build a checkpoint (or give --seeds)")
    print(build(args.family, args.out, size=args.size))


if __name__ == "__main__":
    main()
