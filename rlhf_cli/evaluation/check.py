"""`rlhf check`: everything that can be wrong with a recipe, found before any compute is spent.

    rlhf check --recipe tiny
    rlhf check --recipe my.yaml --set sft.max_length=1024

It reads and validates every data set through the data layer, renders one SFT example through the chat template with
the trained-on (assistant) tokens marked, draws a token-length histogram of the SFT data with the count that
`sft.max_length` would cut, estimates parameters and training memory for each stage from the model configs (no
weights are loaded), and builds every stage's trainer config. Every problem is collected; the command exits 2 with all
of them listed. Toy data is generated into a temporary folder: check writes nothing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from rlhf_cli.data import load_stage_data, train_eval_split
from rlhf_cli.models import hub, sizing
from rlhf_cli.models.modeling import load_error, load_tokenizer, model_config, train_tokenizer, training_chat_template
from rlhf_cli.recipe import DataSpec
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.layout import RunLayout
from rlhf_cli.stages.common import build_trainer_configs, trainer_config

SAMPLE = 2000  # examples tokenized for the histogram / texts for a stand-in tokenizer
GIB = 1024**3


def check_recipe(
    recipe, run_dir: Path, console: Console | None = None, start_with: str | None = None
) -> dict[str, Any]:
    """Print every check as rich tables; raise one UserError listing every problem found. Returns what was measured.
    `start_with`: the command that runs this recipe into this run folder, which the closing line offers."""
    import datasets

    console = console or Console()
    run_dir = Path(run_dir)
    datasets.disable_progress_bars()  # the tables say what was read
    problems: list[str] = []
    console.print(
        f"[bold]rlhf check[/bold]: recipe [cyan]{recipe.name}[/cyan] (hash {recipe.fingerprint()}), run folder {run_dir}"
    )
    if sizing.auto_keys(recipe):  # chosen when pretrain runs, from the text and the budget
        console.print(
            f"{', '.join(sizing.auto_keys(recipe))}: auto, chosen by pretrain from the text and its budget; checked "
            "here at the largest it can choose"
        )
        recipe = sizing.apply(recipe, sizing.largest(recipe))
    with tempfile.TemporaryDirectory(prefix="rlhf-check-") as tmp:
        data = check_data(recipe, run_dir, Path(tmp) / "toy", problems, console)
        tokenizer, tok_source = pick_tokenizer(recipe, run_dir, data, problems)
    summary: dict[str, Any] = {"data": {k: v["rows"] for k, v in data.items()}, "tokenizer": tok_source}
    if tokenizer is not None and data.get("sft", {}).get("train") is not None:
        console.print(f"\nTokenizer: {tok_source}")
        render_example(recipe, tokenizer, data["sft"]["train"], problems, console)
        summary["sft_lengths"] = length_histogram(recipe, tokenizer, data["sft"]["train"], console)
    configs = trainer_configs(recipe, run_dir, problems, console)
    if tokenizer is not None:
        summary["memory"] = memory_estimates(recipe, run_dir, tokenizer, configs, data, problems, console)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise UserError(
            f"rlhf check found {len(problems)} problem{'s' if len(problems) > 1 else ''} in recipe {recipe.name}:\n{lines}"
        )
    console.print(
        "\n[bold green]All checks passed.[/bold green] Start with "
        f"`{escape(start_with or f'rlhf pipeline --recipe {recipe.name}')}` (or one stage: `pretrain` in place of "
        "`pipeline`, and so on).",
        highlight=False,
    )
    return summary


# ---------------------------------------------------------------------------------------------------------- data


def _data_jobs(recipe, run_dir: Path) -> list[tuple[str, str, Any, str]]:
    """(label, data-layer stage, spec or None, note) for every data set the recipe names."""

    jobs = [
        ("pretrain", "pretrain", recipe.pretrain.data, ""),
        ("sft", "sft", recipe.sft.data, ""),
        ("feedback prompts", "ppo", recipe.feedback.data, ""),
    ]
    annotator = recipe.feedback.annotator
    if annotator not in ("human", "toy", "web"):
        jobs.append(("feedback rankings", "reward", DataSpec(path=annotator), "feedback.annotator"))
    if recipe.reward.data is not None:
        jobs.append(("reward", "reward", recipe.reward.data, ""))
    elif RunLayout(run_dir).rankings.exists():
        jobs.append(("reward", "reward", DataSpec(path=str(RunLayout(run_dir).rankings)), "this run's feedback"))
    else:
        jobs.append(("reward", "reward", None, "made by `rlhf label` (the feedback stage) before the reward stage"))
    jobs.append(("ppo", "ppo", recipe.ppo.data, ""))
    if recipe.dpo.data is not None and (recipe.dpo.data.path or recipe.dpo.data.hub):  # else: the run's rankings
        jobs.append(("dpo", "reward", recipe.dpo.data, ""))
    return jobs


def _source(spec) -> str:
    if spec.toy and not (spec.path or spec.hub):
        return "toy world"
    where = spec.path or f"hub:{spec.hub}" + (f" ({spec.config})" if spec.config else "")
    return where + (f" [format {spec.format}]" if spec.format else "")


def check_data(recipe, run_dir: Path, toy_dir: Path, problems: list[str], console: Console) -> dict[str, dict]:
    """Read, normalise and split every data set; a table of row counts; each failure added to `problems`."""

    table = Table(title="Data sets (read and validated through the data layer)", title_justify="left")
    for col, just in (
        ("stage", "left"),
        ("source", "left"),
        ("train rows", "right"),
        ("eval rows", "right"),
        ("status", "left"),
    ):
        table.add_column(col, justify=just, overflow="fold")
    out: dict[str, dict] = {}
    for label, stage, spec, note in _data_jobs(recipe, run_dir):
        if spec is None:
            table.add_row(label, note, "-", "-", "[dim]later[/dim]")
            continue
        try:
            ds = load_stage_data(stage, spec, toy_dir=toy_dir, seed=recipe.seed)
            train, evals = train_eval_split(ds, spec, stage, seed=recipe.seed, toy_dir=toy_dir)
        except UserError as err:
            problems.append(f"{label} data ({_source(spec)}): {err}")
            table.add_row(label, _source(spec), "-", "-", "[red]error[/red]")
            continue
        rows = len(train) if hasattr(train, "__len__") else None
        out[label] = {"train": train, "eval": evals, "rows": rows}
        table.add_row(
            label,
            _source(spec) + (f" ({note})" if note else ""),
            "streamed" if rows is None else str(rows),
            str(len(evals)),
            "[green]ok[/green]",
        )
    console.print(table)
    return out


def _head(ds, n: int) -> list[dict]:
    return list(ds.take(n)) if not hasattr(ds, "__len__") else [ds[i] for i in range(min(n, len(ds)))]


# ---------------------------------------------------------------------------------------------------------- tokenizer


def pick_tokenizer(recipe, run_dir: Path, data: dict, problems: list[str]):
    """The tokenizer the run will use: tokenizer.from, this run's pretrain/final, an init_from model's, else a stand-in
    trained on a sample of the pre-training corpus. Returns (tokenizer or None, description)."""

    final = RunLayout(run_dir).final("pretrain")
    candidates = [
        (recipe.tokenizer.from_, "tokenizer.from"),
        (str(final) if (final / "tokenizer_config.json").exists() else None, "this run's pretrain/final"),
        (recipe.sft.init_from, "sft.init_from"),
        (recipe.pretrain.init_from, "pretrain.init_from"),
    ]
    for ref, what in candidates:
        if ref:
            try:
                return load_tokenizer(ref, trust_remote_code=recipe.model.trust_remote_code), f"{ref} ({what})"
            except UserError as err:
                problems.append(f"{what}: {err}")
                return None, f"{ref} ({what}, failed)"
    if "pretrain" in data:
        texts = [row["text"] for row in _head(data["pretrain"]["train"], SAMPLE)]
    elif "sft" in data:
        texts = [m["content"] for row in _head(data["sft"]["train"], SAMPLE) for m in row["messages"]]
    else:
        return None, "none (no data to train one on)"
    spec = recipe.tokenizer.train or type(recipe.tokenizer).model_fields["train"].default_factory()
    tok = train_tokenizer(texts, vocab_size=spec.vocab_size, min_frequency=spec.min_frequency)
    return (
        tok,
        f"a stand-in BPE (vocab {spec.vocab_size}) trained on {len(texts)} pre-training texts; the run trains its own on the full corpus",
    )


# ---------------------------------------------------------------------------------------------------------- SFT example


def render_example(recipe, tokenizer, train, problems: list[str], console: Console) -> None:
    """The first SFT conversation through the chat template, trained-on tokens in [[green brackets]]."""
    messages = _head(train, 1)[0]["messages"]
    template = training_chat_template(tokenizer) or tokenizer.chat_template  # TRL's marked twin of a known template
    enc = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, chat_template=template
    )
    ids = list(enc["input_ids"])
    mask = list(enc.get("assistant_masks") or [0] * len(ids))
    if not recipe.sft.assistant_only_loss:
        mask = [1] * len(ids)
    elif not any(mask):
        problems.append(
            "sft.assistant_only_loss is true but the tokenizer's chat template marks no assistant tokens "
            "(it has no {% generation %} block, and TRL has no training version of it); set "
            "sft.assistant_only_loss: false or use a template with one"
        )
    text = Text()
    i = 0
    while i < len(ids):
        j = i
        while j < len(ids) and mask[j] == mask[i]:
            j += 1
        piece = tokenizer.decode(ids[i:j], skip_special_tokens=False)
        if mask[i]:
            text.append("[[", style="dim green")
            text.append(piece, style="bold green")
            text.append("]]", style="dim green")
        else:
            text.append(piece, style="dim")
        i = j
    trained = sum(mask)
    console.print(
        Text(
            f"\nOne SFT example through the chat template ({len(ids)} tokens; the {trained} trained on are "
            "[[in brackets]]):"
        )
    )
    console.print(text)


def length_histogram(recipe, tokenizer, train, console: Console, bins: int = 10) -> dict[str, Any]:
    """Token lengths of (a sample of) the SFT conversations as a text histogram; how many `sft.max_length` cuts."""
    rows = _head(train, SAMPLE)
    texts = tokenizer.apply_chat_template([r["messages"] for r in rows], tokenize=False)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    limit = recipe.sft.max_length
    cut = sum(n > limit for n in lengths)
    lo, hi = min(lengths), max(lengths)
    width = max(1, -(-(hi - lo + 1) // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min((n - lo) // width, bins - 1)] += 1
    table = Table(
        title=f"SFT token lengths ({len(lengths)} conversations{' sampled' if len(rows) == SAMPLE else ''})",
        title_justify="left",
        caption=f"{cut} of {len(lengths)} ({100 * cut / len(lengths):.1f}%) longer than "
        f"sft.max_length={limit} would be cut",
        caption_justify="left",
    )
    table.add_column("tokens", justify="right")
    table.add_column("count", justify="right")
    table.add_column("", justify="left")
    top = max(counts) or 1
    for b, count in enumerate(counts):
        start = lo + b * width
        if start > hi:
            break
        over = start + width - 1 > limit
        bar = "█" * round(30 * count / top) or ("▏" if count else "")
        table.add_row(f"{start}-{start + width - 1}", str(count), Text(bar, style="red" if over else "cyan"))
    console.print(table)
    mean = sum(lengths) / len(lengths)
    return {"count": len(lengths), "min": lo, "max": hi, "mean": mean, "over_max_length": cut}


# ---------------------------------------------------------------------------------------------------------- configs


def trainer_configs(recipe, run_dir: Path, problems: list[str], console: Console) -> dict[str, Any]:
    """Every stage's trainer config (defaults < recipe), built as training would build it."""

    try:
        configs = build_trainer_configs(recipe, run_dir)
    except UserError:
        configs = {}
        with tempfile.TemporaryDirectory() as tmp:  # one at a time, to name every stage that fails
            for stage in ("pretrain", "sft", "reward", "ppo"):
                try:
                    configs[stage] = trainer_config(recipe, stage, Path(tmp) / stage)
                except UserError as err:
                    problems.append(str(err))
    table = Table(title="Trainer configs (built, not run)", title_justify="left")
    for col in ("stage", "config class", "length", "learning rate", "batch x accum", "precision"):
        table.add_column(col, justify="right" if col in ("learning rate", "batch x accum") else "left")
    for stage, cfg in configs.items():
        length = (
            f"{cfg.max_steps} steps"
            if cfg.max_steps > 0
            else f"{cfg.num_train_epochs:g} epoch{'s' * (cfg.num_train_epochs != 1)}"
        )
        table.add_row(
            stage,
            type(cfg).__name__,
            length,
            f"{cfg.learning_rate:g}",
            f"{cfg.per_device_train_batch_size} x {cfg.gradient_accumulation_steps}",
            "bf16" if cfg.bf16 else "fp16" if cfg.fp16 else "fp32",
        )
    console.print(table)
    return configs


# ---------------------------------------------------------------------------------------------------------- memory


def _config(ref: str | None, fallback, what: str, recipe, problems: list[str]):
    if not ref:
        return fallback
    from transformers import AutoConfig

    if not Path(ref).expanduser().exists():
        hub.offline_unless_reachable()
    try:
        return AutoConfig.from_pretrained(ref, trust_remote_code=recipe.model.trust_remote_code)
    except (OSError, ValueError) as err:
        problems.append(f"{what}: {load_error('a model config', ref, err)}")
        return None


def _shape(config, classifier: bool, lora) -> dict[str, Any]:
    """Parameter counts from a config, by building the model on the meta device (no memory, no weights)."""
    import copy

    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = copy.deepcopy(config)
    if classifier:
        config.num_labels = 1
    with torch.device("meta"):
        model = (AutoModelForSequenceClassification if classifier else AutoModelForCausalLM).from_config(config)
    total = sum(p.numel() for p in model.parameters())
    trainable = total
    if lora is not None:
        targets = lora.target_modules
        trainable = 0
        for name, module in model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if not isinstance(module, nn.Linear) or leaf in ("lm_head", "score"):
                continue
            if targets == "all-linear" or leaf in (targets if isinstance(targets, list) else [targets]):
                trainable += lora.r * (module.in_features + module.out_features)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None) or text.n_embd
    layers = getattr(text, "num_hidden_layers", None) or text.n_layer
    heads = getattr(text, "num_attention_heads", None) or text.n_head
    return {
        "total": total,
        "trainable": trainable,
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "vocab": text.vocab_size,
        "classifier": classifier,
        "qlora": bool(lora is not None and lora.qlora),
    }


def _activations(
    shape, batch: int, seq: int, checkpointing: bool, bytes_per: int, logit_positions: int | None = None
) -> int:
    """Rough activation memory of one training step (Korthikanti et al. 2022: s·b·h·(34 + 5·a·s/h) per layer at 16 bit),
    plus the logits and their gradient in fp32 (`logit_positions` per row: PPO keeps only the answer's)."""
    s, b, h, a, n = seq, batch, shape["hidden"], shape["heads"], shape["layers"]
    per_layer = s * b * h * (34 + 5 * a * s / h) * bytes_per / 2
    layers = (2 * s * b * h * bytes_per / 2) * n + per_layer if checkpointing else per_layer * n
    logits = 0 if shape["classifier"] else 2 * b * (logit_positions or s) * shape["vocab"] * 4
    return int(layers + logits)


def _state(shape, nbytes: int) -> int:
    """Weights + grads + AdamW moments in bytes: trained weights are fp32 masters in either precision (16 B/param);
    with LoRA only the adapter trains (fp32), the frozen base in `nbytes` (QLoRA: 4 bit)."""
    total, trainable = shape["total"], shape["trainable"]
    if trainable == total:
        return total * 16
    base = total // 2 if shape["qlora"] else total * nbytes
    return base + trainable * 16


def memory_estimates(
    recipe, run_dir: Path, tokenizer, configs: dict, data: dict, problems: list[str], console: Console
):
    """Parameters and a training-memory estimate for each stage (PPO: policy, reference, reward and value models)."""

    try:
        own = model_config(recipe.model, tokenizer)
    except UserError as err:
        problems.append(str(err))
        return {}
    base = _config(recipe.pretrain.init_from, own, "pretrain.init_from", recipe, problems)
    sft = _config(recipe.sft.init_from, base, "sft.init_from", recipe, problems)
    reward = _config(recipe.reward.init_from, sft, "reward.init_from", recipe, problems)
    ppo = recipe.ppo
    policy = _config(ppo.policy_from, sft, "ppo.policy_from", recipe, problems)
    rm = _config(ppo.reward_from, reward, "ppo.reward_from", recipe, problems)
    value = _config(ppo.value_from, rm, "ppo.value_from", recipe, problems)
    prompt_len = 64
    if "ppo" in data:
        rows = _head(data["ppo"]["eval"], 256)
        if rows:
            prompt_len = max(
                len(
                    tokenizer.apply_chat_template(
                        r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True
                    )["input_ids"]
                )
                for r in rows
            )
    response = configs["ppo"].response_length if "ppo" in configs else (ppo.response_length or 48)

    def batch(stage: str, default: int = 16) -> tuple[int, bool]:
        cfg = configs.get(stage)
        return (cfg.per_device_train_batch_size, bool(cfg.gradient_checkpointing)) if cfg else (default, False)

    # (stage, [(role, config, classifier, lora, trains)], batch, seq)
    plan = [
        ("pretrain", [("model", base, False, None, True)], *batch("pretrain"), recipe.pretrain.block_size),
        ("sft", [("model", sft, False, recipe.sft.lora, True)], *batch("sft"), recipe.sft.max_length),
        (
            "reward",
            [("model", reward, True, None, True)],
            batch("reward")[0] * 2,
            batch("reward")[1],
            recipe.reward.max_length,
        ),
        (
            "ppo",
            [
                ("policy", policy, False, ppo.lora, True),
                ("ref", policy, False, None, False),
                ("rm", rm, True, None, False),
                ("value", value, True, None, True),
            ],
            *batch("ppo", 32),
            prompt_len + response,
        ),
    ]
    table = Table(
        title="Parameters and training memory (estimated from configs; no weights loaded)",
        title_justify="left",
        caption="trained weights are fp32 masters in both columns: weights + grads + AdamW moments = 16 B/param "
        "(LoRA: the adapter's; its frozen base 4 or 2 B), + activations (fp32 or bf16). PPO: policy + ref(erence) + "
        "rm (reward model) + value; frozen models (ref, rm) hold weights only, in the compute dtype. Activations: "
        "Korthikanti et al. (2022), plus fp32 logits (PPO: the answer's only); PPO: "
        f"{prompt_len}-token prompts + {response}-token answers. Under ZeRO-3 / FSDP each process holds 1/N of "
        "the weights, grads and moments.",
        caption_justify="left",
    )
    for col in ("stage", "models", "parameters", "trainable", "batch x seq", "fp32", "bf16"):
        table.add_column(col, justify="left" if col in ("stage", "models") else "right")
    out = {}
    for stage, models, b, ckpt, seq in plan:
        if any(cfg is None for _, cfg, *_ in models):
            table.add_row(stage, "-", "-", "-", "-", "[red]config missing[/red]", "")
            continue
        totals = {"fp32": 0, "bf16": 0}
        params = trainable = 0
        for _role, cfg, classifier, lora, trains in models:
            shape = _shape(cfg, classifier, lora)
            params += shape["total"]
            for name, nbytes in (("fp32", 4), ("bf16", 2)):
                if trains:
                    answer = response if stage == "ppo" else None
                    totals[name] += _state(shape, nbytes) + _activations(shape, b, seq, ckpt, nbytes, answer)
                else:
                    totals[name] += shape["total"] * nbytes
            trainable += shape["trainable"] if trains else 0
        roles = "+".join(r for r, *_ in models)
        table.add_row(
            stage,
            roles,
            _count(params),
            _count(trainable),
            f"{b} x {seq}",
            _bytes(totals["fp32"]),
            _bytes(totals["bf16"]),
        )
        out[stage] = {
            "parameters": params,
            "trainable": trainable,
            "bytes_fp32": totals["fp32"],
            "bytes_bf16": totals["bf16"],
        }
    console.print(table)
    console.print(f"[dim]Available here: {_available()}[/dim]")
    return out


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e5 else str(n)


def _bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 4 else f"{n / 1024**2:.0f} MiB"


def _available() -> str:
    import os

    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"{torch.cuda.device_count()} x {props.name}, {props.total_memory / GIB:.0f} GiB each"
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return f"CPU, {ram / GIB:.0f} GiB RAM, {os.cpu_count()} cores"
    except (ValueError, OSError, AttributeError):
        return "CPU"
