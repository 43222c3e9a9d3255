"""Tokenizers, the chat template, size presets, building and loading models, and the hardware facts stages need.

One chat template for the whole project, so SFT, sampling, PPO and chat format conversations the same way:

    <|user|> What does the fox eat?<|assistant|> the fox eats berries.<|endoftext|>

The assistant turn sits inside `{% generation %}` so TRL's `assistant_only_loss` can mask everything else. Each turn's
text starts with a space, which the model writes itself: a byte-level BPE tokenizer spells a word after a space
("Ġgood", the token pre-training saw thousands of times) differently from a word glued to the role marker ("g" "ood",
rare pieces). Without it the tiny model's SFT answers began with junk ("ood question!") on held-out phrasings.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from rlhf_cli.models import hub
from rlhf_cli.runtime.errors import UserError

PAD, EOS = "<|pad|>", "<|endoftext|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [PAD, EOS, *ROLE_TOKENS.values()]

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|assistant|>{% generation %} {{ message['content'] }}<|endoftext|>{% endgeneration %}"
    "{%- else -%}"
    "{{ '<|' + message['role'] + '|> ' }}{{ message['content'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)

# name: (hidden, layers, heads, intermediate, context). Llama-style by default; GPT-2 uses the same shapes (MLP 4x).
SIZE_PRESETS: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (
        128,
        4,
        4,
        344,
        512,
    ),  # ~1.05M parameters with a 2048 vocabulary (0.86M on the toy world's 522): a 2-core CPU model
    "small": (512, 8, 8, 1376, 1024),  # ~30M
    "gpt2-124m": (768, 12, 12, 3072, 1024),
    "350m": (1024, 24, 16, 4096, 2048),
    "1b": (2048, 22, 32, 5632, 2048),
}


# ------------------------------------------------------------------------------------------------------ tokenizers


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2):
    """A byte-level BPE trained on `texts`, with our special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_batches(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS)
    fast.add_special_tokens({"additional_special_tokens": list(ROLE_TOKENS.values())})
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 1_000_000
    return fast


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "tokenizer.model")


def check_model_ref(ref: str, *, needs: tuple[str, ...] = ("config.json",)) -> None:
    """A UserError for a local path that does not exist or is a folder with none of `needs`; hub ids pass (checked on
    load). Without it transformers answers a missing path with a hub-id syntax error, an empty folder with a cut one."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if not any((path / name).exists() for name in needs):
            raise UserError(
                f"{ref} is not a model folder (no {needs[0]}); point to a folder saved with save_pretrained."
            )
    elif path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1:  # a hub id is at most owner/name
        raise UserError(f"{ref} does not exist (or is a file); point to a model folder saved with save_pretrained.")
    else:
        hub.offline_unless_reachable()


CAUSAL_LM, REWARD_MODEL = "causal LM", "reward model"


def check_model_kind(ref: str, expected: str | None, what: str) -> str | None:
    """Refuse, before anything loads, a model of the other kind than `expected` (CAUSAL_LM or REWARD_MODEL): a reward
    model (a sequence classifier with a score head) where a causal LM is wanted, or the reverse, which transformers
    would load with a fresh random head and a MISSING line in its load report. The kind is read from config.json's
    `architectures` (a LoRA adapter: adapter_config.json's `task_type`), of a local folder or a hub id's cached
    config; returns it, or None when it cannot be told (the load decides). `what` names the setting, e.g.
    `ppo.reward_from`; `expected` None only reads the kind."""
    import json

    def read(path: Path | None) -> dict:
        try:
            data = json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else {}
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def find(name: str) -> Path | None:
        path = Path(ref).expanduser()
        if path.is_dir():
            return path / name
        if path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1:
            return None
        try:  # a hub id: its cached file only, never a download
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(ref, name)
        except Exception:  # noqa: BLE001 - an id the cache cannot hold, a cache that cannot be read: not known
            return None
        return Path(cached) if isinstance(cached, str) else None

    kind = None
    task = read(find("adapter_config.json")).get("task_type")
    if task is not None:
        kind = {"SEQ_CLS": REWARD_MODEL, "CAUSAL_LM": CAUSAL_LM}.get(str(task))
    else:
        names = read(find("config.json")).get("architectures") or []
        names = [str(a) for a in names] if isinstance(names, list) else []
        if names and all(a.endswith("ForSequenceClassification") for a in names):
            kind = REWARD_MODEL
        elif names and all(a.endswith(("ForCausalLM", "LMHeadModel")) for a in names):
            kind = CAUSAL_LM
    if kind is None or expected is None or kind == expected:
        return kind
    if expected == REWARD_MODEL:
        raise UserError(
            f"{what}: {ref} is a causal LM, not a reward model (a sequence classifier with a score head): it would "
            "score with a fresh, random head; give a reward model, such as a run's reward/final made by `rlhf reward`."
        )
    raise UserError(
        f"{what}: {ref} is a reward model (a sequence classifier with a score head), not a causal LM that writes "
        f"answers; give a language model, such as a run's sft/final (`rlhf reward inspect {ref}` looks at a reward "
        "model)."
    )


def load_error(what: str, ref: str, err: Exception) -> str:
    """One sentence for a model that would not load; offline, what to do instead."""
    if hub.reachable() is False and not Path(ref).expanduser().exists():
        return (
            f"Cannot load {what} from '{ref}': it is not in the local Hugging Face cache and the hub cannot be reached "
            "from here; give a local model folder, or download it once where there is a network (HF_HOME's cache)."
        )
    return f"Cannot load {what} from '{ref}': {str(err).splitlines()[0]}"


def load_tokenizer(ref: str, *, trust_remote_code: bool = False):
    """A tokenizer from a folder or hub id, given a pad token (distinct from EOS where we can) and a chat template."""
    from transformers import AutoTokenizer

    check_model_ref(ref, needs=TOKENIZER_FILES)
    try:
        tok = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(load_error("a tokenizer", ref, err)) from None
    return ensure_chat_ready(tok)


def ensure_chat_ready(tok):
    """Give a tokenizer what the pipeline needs: a pad token and, when it has none, the project's chat template."""
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": EOS})
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": PAD})
    if not getattr(tok, "chat_template", None):
        missing = [t for t in ROLE_TOKENS.values() if t not in tok.get_vocab()]
        if missing:
            tok.add_special_tokens({"additional_special_tokens": missing})
        # The project's template names the EOS literally; a foreign tokenizer's own EOS is what it must emit.
        tok.chat_template = CHAT_TEMPLATE.replace(EOS, tok.eos_token)
    return tok


# ------------------------------------------------------------------------------------------------------ models


def model_dimensions(spec) -> dict[str, int]:
    """The dimensions of a fresh model of the recipe's `model:` section: its size preset, explicit ones overriding."""
    hidden, layers, heads, inter, ctx = SIZE_PRESETS[spec.size]
    hidden = spec.hidden_size or hidden
    if spec.arch == "gpt2":
        inter = 4 * hidden
    else:
        inter = spec.intermediate_size or (inter if not spec.hidden_size else int(8 * hidden / 3 / 16 + 1) * 16)
    return {
        "hidden_size": hidden,
        "num_layers": spec.num_layers or layers,
        "num_heads": spec.num_heads or heads,
        "intermediate_size": inter,
        "max_position_embeddings": spec.max_position_embeddings or ctx,
    }


def model_config(spec, tokenizer):
    """A transformers config from the recipe's `model:` section (model_dimensions)."""
    dims = model_dimensions(spec)
    hidden, layers, heads = dims["hidden_size"], dims["num_layers"], dims["num_heads"]
    inter, ctx = dims["intermediate_size"], dims["max_position_embeddings"]
    if hidden % heads:
        raise UserError(f"model.hidden_size {hidden} must be a multiple of model.num_heads {heads}.")
    common = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": True,
    }
    if spec.arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_inner=inter, n_positions=ctx, **common)
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=ctx,
        rope_theta=10000.0,
        **common,
    )


def build_model(spec, tokenizer, seed: int = 0):
    """A freshly initialised causal LM from the recipe's `model:` section, stopping at the end of a turn."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        model_config(spec, tokenizer), attn_implementation=attention(spec.attn_implementation)
    )
    stop_at_end_of_turn(model, tokenizer)
    return model


def load_causal_lm(
    ref: str,
    *,
    trust_remote_code: bool = False,
    tokenizer=None,
    dtype: str = "float32",
    attn_implementation: str = "auto",
):
    """A causal LM from a folder or hub id (safetensors only), with a clear message when it is not one.

    `dtype`: the weights' dtype in memory, float32 unless asked: a checkpoint saved in bf16 (most of the hub's) is
    upcast, so a model that trains has fp32 master weights — in bf16 an optimiser step smaller than half a bf16 step
    rounds to nothing. Frozen models may ask for `frozen_dtype(...)`. With `tokenizer`, the model's generation
    settings stop at the end of an assistant turn (`stop_at_end_of_turn`). `attn_implementation`: the recipe's
    `model.attn_implementation` (`attention` resolves auto)."""
    import torch
    from transformers import AutoModelForCausalLM

    check_model_ref(ref)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            ref,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            dtype=getattr(torch, dtype),
            attn_implementation=attention(attn_implementation),
        )
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise UserError(
                f"{ref} needs custom code from its repository; set model.trust_remote_code: true in the recipe if you trust it."
            ) from None
        raise UserError(load_error("a causal language model", ref, err)) from None
    except OSError as err:
        raise UserError(load_error("a causal language model", ref, err)) from None
    if tokenizer is not None:
        stop_at_end_of_turn(model, tokenizer)
    return model


def attention(setting: str = "auto") -> str:
    """The attention kernel: the recipe's `model.attn_implementation`, or for auto flash-attention 2 on a CUDA GPU
    where the flash_attn package is installed, else PyTorch's scaled_dot_product_attention (sdpa)."""
    if setting != "auto":
        return setting
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def frozen_dtype(bf16: bool) -> str:
    """The dtype of a model that never trains (a reference, a reward model scoring PPO's answers, a judge): the
    compute dtype, which halves its memory in bf16; fp32 otherwise."""
    return "bfloat16" if bf16 else "float32"


def training_chat_template(tokenizer) -> str | None:
    """The chat template SFT trains with when the loss is on the assistant's tokens only: the tokenizer's own when it
    marks them (`{% generation %}`), else the training version TRL ships of a known template (Qwen2.5, Llama 3,
    Phi-3, ...: the same text with the markers), else None (then only `assistant_only_loss: false` can train)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if has_generation_markers(template if isinstance(template, str) else (template or {}).get("default", "")):
        return template
    try:
        return get_training_chat_template(tokenizer)
    except ValueError:
        return None


def check_trainable_template(tokenizer, ref: str, stage: str) -> None:
    """Refuse, before anything is written, a chat template SFT cannot mask the assistant's tokens of."""
    if training_chat_template(tokenizer) is None:
        raise UserError(
            f"{stage}: the chat template of {ref} does not mark the assistant's tokens ({{% generation %}}) and TRL "
            f"has no training version of it, so the loss cannot be on the answers alone; set "
            f"sft.assistant_only_loss: false, or give a tokenizer whose template has {{% generation %}} markers."
        )


def end_of_turn_ids(tokenizer) -> list[int]:
    """The tokens that end an assistant turn: the one the chat template writes after an assistant message (Qwen's
    <|im_end|>, Llama 3's <|eot_id|>, Phi-3's <|end|>, the project's <|endoftext|>), then the tokenizer's eos.

    Generation stops at any of them, an answer counts as finished when it ends with one, and the answer is cut there.
    Found by rendering a conversation: the first special token after the assistant's text."""
    cached = getattr(tokenizer, "_rlhf_end_of_turn", None)
    template = getattr(tokenizer, "chat_template", None)
    if cached is not None and cached[0] == (template, tokenizer.eos_token_id):
        return list(cached[1])
    ids = []
    if template:
        probe = "zqxjvendofturnprobe"
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception:  # noqa: BLE001 - a template that cannot render this conversation: eos alone
            text = ""
        if probe in text:
            after = tokenizer(text[text.index(probe) + len(probe) :], add_special_tokens=False)["input_ids"]
            special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
            ids = [next(i for i in after if i in special)] if any(i in special for i in after) else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    try:
        tokenizer._rlhf_end_of_turn = ((template, tokenizer.eos_token_id), tuple(ids))
    except AttributeError:  # pragma: no cover - a tokenizer that takes no attributes
        pass
    return ids


def stop_at_end_of_turn(model, tokenizer) -> None:
    """Make `model.generate` (and so a stock `transformers.pipeline` on the saved folder, and TRL's online trainers)
    stop at the end of an assistant turn and pad with the tokenizer's pad token."""
    stops = end_of_turn_ids(tokenizer)
    config = getattr(model, "generation_config", None)
    if config is not None:
        config.eos_token_id = stops if len(stops) > 1 else stops[0]
        config.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id


def checkpoint_dtype(ref: str, *, trust_remote_code: bool = False) -> str:
    """The dtype a checkpoint's weights were saved in (config.json's `dtype`, `torch_dtype` before transformers 5);
    float32 when it does not say."""
    path = Path(ref).expanduser() / "config.json"
    try:
        if path.is_file():
            import json

            config = json.loads(path.read_text(encoding="utf-8"))
            value = config.get("dtype") or config.get("torch_dtype")
        else:
            from transformers import AutoConfig

            value = getattr(AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code), "dtype", None)
    except (OSError, ValueError):
        value = None
    return str(value).removeprefix("torch.") if value else "float32"


# A bf16 save keeps what was learned when rounding changes the update (final - source weights) by at most this much
# (relative L2 norm); otherwise `save_dtype: auto` saves fp32. A short fine-tune at a small learning rate moves most
# weights by less than half a bf16 step, and rounding would put them back where they started.
ROUNDING_TOLERANCE = 0.1


def save_model(model, folder: Path, *, source: str | None, setting: str = "auto", state_dict=None) -> str:
    """Write `model` (or `state_dict` with its config) to `folder` as safetensors in the dtype `setting` picks, and
    return one sentence saying which and why, for the model card.

    setting: auto (the dtype of `source`, the checkpoint the stage started from, unless rounding to it would change
    what was learned by more than ROUNDING_TOLERANCE: then float32), or float32 / bfloat16 / float16."""
    import torch

    state = state_dict if state_dict is not None else model.state_dict()
    source_dtype = checkpoint_dtype(source) if source else "float32"
    if setting != "auto":
        dtype, why = setting, f"save_dtype: {setting} in the recipe"
    elif source_dtype == "float32":
        dtype, why = "float32", "as the checkpoint it started from" if source else "trained in float32"
    else:
        change = rounding_change(state, source, getattr(torch, source_dtype))
        if change is None:
            dtype, why = "float32", f"the {source_dtype} weights of {source} could not be read to check the rounding"
        elif change <= ROUNDING_TOLERANCE:
            dtype, why = (
                source_dtype,
                (f"as the checkpoint it started from; rounding changes the trained update by {change:.1%}"),
            )
        else:
            dtype, why = (
                "float32",
                (
                    f"{source} is {source_dtype}, but rounding to it would change what training learned by {change:.0%} "
                    f"(set save_dtype: {source_dtype} to save it so anyway)"
                ),
            )
    target = getattr(torch, dtype)
    cast = {k: (v.to(target) if v.is_floating_point() else v) for k, v in state.items()}
    model.save_pretrained(folder, state_dict=cast)
    _set_config_dtype(Path(folder), dtype)
    return f"Weights saved in {dtype}: {why}."


def _set_config_dtype(folder: Path, dtype: str) -> None:
    """config.json's `dtype` says what is on disk (save_pretrained writes the in-memory model's)."""
    import json

    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["dtype"] = dtype
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def rounding_change(state: dict, source: str, dtype) -> float | None:
    """||round(w) - w|| / ||w - w_source|| over the weights `state` shares with the checkpoint `source` (read one
    tensor at a time from its safetensors, so no second copy of the model is held): how much saving in `dtype` would
    change the update training made. None when the source's weights are not in a local folder or the cache."""
    from safetensors import safe_open

    files = _safetensors_files(source)
    if not files:
        return None
    err = update = 0.0
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                new = state.get(key)
                if new is None or not new.is_floating_point():
                    continue
                old = fh.get_tensor(key)
                if old.shape != new.shape:  # resized embeddings: compare the rows both have
                    if old.dim() != new.dim() or old.shape[1:] != new.shape[1:]:
                        continue
                    n = min(old.shape[0], new.shape[0])
                    old, new = old[:n], new[:n]
                new = new.detach().float().cpu()
                err += float((new.to(dtype).float() - new).pow(2).sum())
                update += float((new - old.float()).pow(2).sum())
    if update == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return (err / update) ** 0.5


def _safetensors_files(ref: str) -> list[Path]:
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(ref, allow_patterns=["*.safetensors"], local_files_only=True))
        except Exception:  # noqa: BLE001 - not in the cache, or not a repo id: nothing to compare with
            return []
    return sorted(folder.glob("*.safetensors"))


# ------------------------------------------------------------------------------------------------------ fine-tuning


def check_qlora() -> None:
    """QLoRA needs a CUDA GPU and bitsandbytes; refuse before any model loads."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "sft.lora.qlora needs a CUDA GPU (4-bit bitsandbytes kernels); on this machine set "
            "sft.lora.qlora: false to train plain LoRA."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("sft.lora.qlora needs bitsandbytes: `pip install bitsandbytes`, or set sft.lora.qlora: false.")


def load_trainable_causal_lm(init: str, spec, trust: bool, tokenizer=None, attn_implementation: str = "auto"):
    """A fine-tuning stage's starting model (`spec`: its section, `lora.qlora`) in fp32; 4-bit NF4 weights for QLoRA,
    prepared for k-bit training."""

    if spec.lora is None or not spec.lora.qlora:
        return load_causal_lm(
            init, trust_remote_code=trust, tokenizer=tokenizer, attn_implementation=attn_implementation
        )
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        init,
        quantization_config=quant,
        trust_remote_code=trust,
        use_safetensors=True,
        attn_implementation=attention(attn_implementation),
    )
    model = prepare_model_for_kbit_training(model)
    if tokenizer is not None:
        stop_at_end_of_turn(model, tokenizer)
    return model


def resize_for_tokenizer(model, tokenizer) -> list[int]:
    """Grow the embeddings when the tokenizer gained tokens (pad, role markers); returns the new token ids."""
    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old:
        return []
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    return list(range(old, len(tokenizer)))


def frozen_base_in_bf16(model, source: str) -> None:
    """With LoRA only the adapter trains (peft keeps it in fp32: autocast_adapter_dtype), so the frozen base may sit in
    bf16 — half the memory — when the checkpoint is bf16 anyway (nothing is lost; `merged` upcasts before merging)."""
    import torch

    if checkpoint_dtype(source) == "bfloat16":
        model.to(torch.bfloat16)


def merged(peft_model):
    """The adapter merged into its base, in fp32, so the merge keeps updates smaller than a bf16 step."""
    import torch

    return peft_model.to(torch.float32).merge_and_unload()


def lora_config(lora, added_tokens: list[int]):
    """peft's LoraConfig from the recipe's `lora:` section (None without one); new tokens' embeddings stay trainable."""
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
        trainable_token_indices={"embed_tokens": added_tokens} if added_tokens else None,
    )


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def estimate_parameters(spec, vocab_size: int) -> int:
    """Parameters of a fresh model of the recipe's `model:` section, counted on the meta device (no memory, no init)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return count_parameters(AutoModelForCausalLM.from_config(model_config(spec, VocabSize(vocab_size))))


class VocabSize:
    """What model_config reads of a tokenizer, for a model sized before its tokenizer exists."""

    pad_token_id, eos_token_id = 0, 1

    def __init__(self, size: int):
        self.size = size

    def __len__(self):
        return self.size


# ------------------------------------------------------------------------------------------------------ hardware


def inference_device():
    """Where generation and scoring outside a Trainer run: this process's GPU when there is one, else the CPU."""
    import os

    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def measure_matmul_peak(dtype_name: str = "bfloat16", n: int = 1024, seconds: float = 1.0) -> float:
    """FLOP/s of a square matmul on this machine in `dtype_name` (the MFU denominator; measured, not looked up)."""
    import time

    import torch

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        n = 4096
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * count / (time.perf_counter() - start)


def flops_per_token(config, n_params_non_embedding: int, seq_len: int) -> float:
    """Training FLOPs per token: 6·N plus the attention score/value products (12·layers·hidden·seq_len / 2, causal)."""
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    return 6 * n_params_non_embedding + 6 * layers * hidden * seq_len
