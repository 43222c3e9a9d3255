"""`rlhf export`: a clean Hugging Face folder from any stage's model — LoRA merged, safetensors, tokenizer with its chat
template, a model card and the lineage — optionally pushed to the hub.

    rlhf export runs/tiny/ppo/final --out my-chatbot
    rlhf export runs/tiny/sft/final --out my-sft --push-to-hub me/tiny-sft     # needs network and `hf auth login`

The folder is written to a temporary name and renamed into place; an existing --out is kept unless --overwrite.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rlhf_cli.models.modeling import check_model_ref, count_parameters, load_tokenizer
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.files import save_dir_atomic, write_json_atomic
from rlhf_cli.runtime.layout import enclosing_run, is_run_folder, is_stage_folder, path_in_run, resolve_in_run
from rlhf_cli.runtime.runs import library_versions, lineage_paths, read_lineage, write_model_card


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def load_for_export(model_dir: str):
    """(model, tokenizer, info): an adapter merged into its base, or the model as it is; info says which."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    path = Path(model_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"{model_dir} is a file; give a model folder (one with config.json) or an adapter folder.")
    adapter = _read_json(path / "adapter_config.json") if path.is_dir() else {}
    if path.is_dir() and not adapter and not (path / "config.json").exists():
        raise UserError(
            f"{model_dir} is not a model folder (no config.json or adapter_config.json); "
            "give a stage's final/ folder, e.g. runs/tiny/ppo/final."
        )
    # peft stores the base as an absolute path; in a moved run it is found at the same place in the run
    base = resolve_in_run(adapter.get("base_model_name_or_path"), enclosing_run(path) or path) if adapter else None
    if adapter and not base:
        raise UserError(
            f"{path / 'adapter_config.json'} names no base model (base_model_name_or_path); cannot merge it."
        )
    config_dir = base if adapter else model_dir
    classifier = adapter.get("task_type") == "SEQ_CLS" if adapter else _is_classifier(config_dir)
    auto = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(config_dir, use_safetensors=True)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    except (OSError, ValueError) as err:
        raise UserError(f"Cannot load a model from '{model_dir}': {str(err).splitlines()[0]}") from None
    has_tok = path.is_dir() and any((path / n).exists() for n in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = load_tokenizer(str(path) if has_tok or not adapter else base)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # load_tokenizer added a pad or role token
        model.resize_token_embeddings(len(tokenizer))
    info = {
        "source": str(model_dir),
        "merged_lora": bool(adapter),
        "base_model": base,
        "kind": "reward model (sequence classifier)" if classifier else "causal LM",
    }
    return model, tokenizer, info


def _is_classifier(ref: str) -> bool:
    from transformers import AutoConfig

    check_model_ref(ref, needs=("config.json", "adapter_config.json"))
    try:
        config = AutoConfig.from_pretrained(ref)
    except (OSError, ValueError) as err:
        raise UserError(f"Cannot read a model config from '{ref}': {str(err).splitlines()[0]}") from None
    return any("SequenceClassification" in a for a in (config.architectures or []))


def _card(title: str, info: dict, lineage: dict, params: int, out: Path) -> str:
    stage = lineage.get("stage", "unknown")
    parents = lineage.get("parents") or {}
    lines = [
        f"A {info['kind']} with {params / 1e6:.2f}M parameters, exported by `rlhf export` from `{info['source']}`"
        + (f" (a LoRA adapter on `{info['base_model']}`, merged)." if info["merged_lora"] else "."),
        "",
        "## Lineage",
        "",
        f"- stage: **{stage}**",
        *[f"- {name}: `{ref}`" for name, ref in parents.items()],
        f"- recipe: {lineage.get('recipe_name', 'unknown')} (hash {lineage.get('recipe_hash', '-')})",
        f"- data: `{json.dumps(lineage.get('data'), default=str)}`"
        if lineage.get("data") is not None
        else "- data: unknown",
        "",
        "The full record is in `lineage.json` (the source's lineage plus this export).",
        "",
        "## Use",
        "",
        "```python",
    ]
    if info["kind"] == "causal LM":
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'tok = AutoTokenizer.from_pretrained("{out}")',
            f'model = AutoModelForCausalLM.from_pretrained("{out}")',
            'ids = tok.apply_chat_template([{"role": "user", "content": "Hello!"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)',
            "out = model.generate(**ids, max_new_tokens=48, eos_token_id=tok.eos_token_id)",
            'print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))',
            "```",
            "",
            f"Or chat in the terminal: `rlhf chat {out}`.",
        ]
    else:
        lines += [
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            "",
            f'tok = AutoTokenizer.from_pretrained("{out}")',
            f'model = AutoModelForSequenceClassification.from_pretrained("{out}")',
            'text = tok.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], tokenize=False)',
            'score = model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0]',
            "```",
            "",
            f"Or look at it: `rlhf reward inspect {out}`.",
        ]
    return "\n".join(lines)


def export_model(model_dir: str, out: str | Path, push_to_hub: str | None = None, overwrite: bool = False) -> Path:
    """Write a clean HF folder for `model_dir` at `out` (atomically); push it to `push_to_hub` if given. Returns `out`."""

    out = Path(out)
    check_out(model_dir, out, overwrite)
    model, tokenizer, info = load_for_export(model_dir)
    lineage = read_lineage(model_dir)  # its paths as they are now, wherever the source run was when it was written
    record = {**info, "out": str(out), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": library_versions()}
    params = count_parameters(model)
    out_run = enclosing_run(out)  # an export into a run folder names the run's paths relative to it, as the run does

    def stored(path):
        return path_in_run(path, out_run)

    def write(tmp: Path):
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)  # with the chat template
        paths = {k: stored(record[k]) for k in ("source", "out", "base_model")}
        write_json_atomic(tmp / "lineage.json", {**lineage_paths(lineage, stored), "export": {**record, **paths}})
        stage = lineage.get("stage")
        title = f"{out.name}: {'the ' + stage + ' stage' if stage else 'a model'} of an rlhf-cli run"
        write_model_card(tmp, title=title, body=_card(title, info, lineage, params, out))

    save_dir_atomic(out, write)
    print(
        f"Wrote a {info['kind']} ({params / 1e6:.2f}M parameters{', LoRA merged' if info['merged_lora'] else ''}): "
        "safetensors, tokenizer with chat template, README.md, lineage.json"
    )
    if push_to_hub:
        push(out, push_to_hub)
    return out


def is_export(folder: Path) -> bool:
    """A folder `rlhf export` wrote: its lineage.json records the export."""
    return "export" in _read_json(Path(folder) / "lineage.json")


def check_out(model_dir: str, out: Path, overwrite: bool) -> None:
    """Refuse an --out whose replacement would lose work, before anything loads: the model folder itself, a folder
    inside it or holding it, a run folder or a stage's folder (or one holding them), a file, and — even with
    --overwrite — a folder holding anything but a previous export. Only an empty folder or an earlier export of
    `rlhf export` is replaced, and that only with --overwrite."""
    source = Path(model_dir).expanduser()
    target = out.expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder to export into (it is created if missing).")
    if source.exists():
        source = source.resolve()
        if target == source:
            raise UserError(f"--out {out} is the model folder itself; export to another folder.")
        if target in source.parents:
            raise UserError(
                f"--out {out} holds the model being exported ({model_dir}); replacing it would delete the model "
                "(and the run around it): export to a new folder."
            )
        if source in target.parents:
            raise UserError(f"--out {out} is inside the model folder {model_dir}; export to a folder outside it.")
    if not out.exists():
        return
    if is_stage_folder(target) or is_run_folder(target):
        what = "a stage's folder" if is_stage_folder(target) else "a run folder"
        raise UserError(
            f"--out {out} is {what} (replacing it would delete its models, checkpoints and rankings); export to a new "
            "folder."
        )
    held = sorted(out.iterdir())
    if held and not is_export(out):
        shown = ", ".join(p.name for p in held[:3]) + (", ..." if len(held) > 3 else "")
        raise UserError(
            f"--out {out} holds files that are not an `rlhf export` ({shown}); export to a new folder (--overwrite "
            "replaces only an earlier export or an empty folder)."
        )
    if not overwrite and held:
        raise UserError(f"{out} already exists; pass --overwrite to replace it, or choose another --out.")


def push(folder: Path, repo_id: str) -> str:
    """Upload `folder` to the hub repo `repo_id` (created if needed); every failure is a UserError that says what to do."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload from rlhf export")
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError, ValueError, *_network_errors()) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")
        raise UserError(
            f"Could not push {folder} to the hub repo '{repo_id}': {first}. The export itself is complete; check the "
            f"network and the login (`hf auth login` or HF_TOKEN), then run `hf upload {repo_id} {folder}`."
        ) from None
    print(f"Pushed to https://huggingface.co/{repo_id}")
    return str(info)


def _network_errors() -> tuple:
    """The HTTP client's error base classes (huggingface_hub has used requests, httpx and httpx2)."""
    import importlib

    found = []
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)
