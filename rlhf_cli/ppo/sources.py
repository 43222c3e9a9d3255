"""What PPO trains against, from the recipe: the reward sources (`ppo.rewards`: reward models, normalised by their
`reward_stats.json`, and Python functions, weighted), the value model, and PPO-ptx's pre-training blocks."""

from __future__ import annotations

from pathlib import Path

from rlhf_cli.data import load_stage_data
from rlhf_cli.models.modeling import CAUSAL_LM, check_model_kind, frozen_dtype, inference_device, load_tokenizer
from rlhf_cli.models.scoring import load_reward_model
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.files import read_json
from rlhf_cli.runtime.layout import RunLayout
from rlhf_cli.runtime.runs import resolve_model_dir


def reward_sources(recipe, run_dir: Path, trust: bool, precision: str):
    """[(scorer, weight)] from `ppo.rewards` (default: this run's reward model), and {name: folder} for the lineage.
    Reward models are frozen: they load in the compute dtype (`precision`)."""
    from rlhf_cli.ppo.trainer import FunctionReward, load_function

    spec = recipe.ppo
    terms = spec.rewards
    if terms is None:
        default = resolve_model_dir(spec.reward_from, run_dir, "reward", "ppo.reward_from")
        terms = [type("T", (), {"model": default, "function": None, "weight": 1.0})()]
    funcs, dirs = [], {}
    for i, term in enumerate(terms):
        if bool(term.model) == bool(term.function):
            raise UserError(
                f"ppo.rewards[{i}] must name exactly one of model (a reward model folder) or function "
                f"(module:function)."
            )
        if term.function:
            funcs.append((FunctionReward(load_function(term.function), name=term.function), term.weight))
        else:
            path = resolve_model_dir(term.model, run_dir, "reward", f"ppo.rewards[{i}].model")
            funcs.append((reward_model_scorer(path, recipe, trust, precision), term.weight))
            dirs[f"reward_{i}" if i else "reward"] = path
    return funcs, dirs


def reward_model_scorer(path: str, recipe, trust: bool, precision: str):
    from rlhf_cli.ppo.trainer import RewardModelScorer

    tok = load_tokenizer(path, trust_remote_code=trust)
    model = load_reward_model(
        path,
        tok,
        trust_remote_code=trust,
        dtype=frozen_dtype(precision == "bf16"),
        attn_implementation=recipe.model.attn_implementation,
    )
    stats_path = Path(path) / "reward_stats.json"
    stats = read_json(stats_path) if stats_path.exists() else {}
    return RewardModelScorer(
        model,
        tok,
        mean=float(stats.get("mean", 0.0)),
        std=float(stats.get("std", 1.0)),
        max_length=recipe.reward.max_length,
        name=Path(path).parent.name + "/" + Path(path).name,
        precision=precision,  # PPO's training precision: the rewards of the rollout it trains on
    )


def value_model(spec, tokenizer, policy_dir: str, reward_dirs: dict, trust: bool, attn: str = "auto"):
    """The value model: `ppo.value_from`, else the (first) reward model when it shares the policy's tokenizer, else the
    policy with a fresh scalar head. Values are read per token of the policy's answers, so the tokenizers must match."""
    path = spec.value_from or next(iter(reward_dirs.values()), None)
    if path and load_tokenizer(path, trust_remote_code=trust).get_vocab() != tokenizer.get_vocab():
        if spec.value_from:
            raise UserError(
                f"ppo.value_from {path} has a different tokenizer from the policy's ({policy_dir}); the value "
                "model reads the policy's tokens, so give a model that shares its tokenizer (or the SFT model)."
            )
        print(f"ppo: the reward model {path} has its own tokenizer; the value model starts from the policy instead.")
        path = None
    path = path or policy_dir
    model = load_reward_model(path, tokenizer, trust_remote_code=trust, attn_implementation=attn)  # trains: fp32
    if check_model_kind(path, None, "ppo.value_from") == CAUSAL_LM:
        print(f"ppo: the value model starts from {path} (a causal LM) with a new, random value head.")
    return model, path


def ptx_blocks(recipe, run_dir: Path, tokenizer, block: int = 128, max_blocks: int = 4096):
    """PPO-ptx data: the pretrain corpus as token blocks."""
    import torch

    ds = load_stage_data("pretrain", recipe.pretrain.data, toy_dir=RunLayout(run_dir).toy, seed=recipe.seed)
    if recipe.pretrain.block_size != "auto":
        block = min(block, recipe.pretrain.block_size)
    ids: list[int] = []
    for row in ds:
        ids += tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= block * max_blocks:
            break
    n = len(ids) // block
    if n == 0:
        raise UserError("PPO-ptx: the pretrain corpus is shorter than one block; add text or set ppo.ptx_coef: 0.")
    return torch.tensor(ids[: n * block]).view(n, block)


def reward_model_function(recipe, stage: str, run_dir: Path, trust: bool, precision: str, stop_ids: list[int]):
    """A method's reward as TRL's online trainers call it — `f(prompts, completions, completion_ids, **kw) -> list` —
        through PPO's scoring path: the run's reward model (`<stage>.reward_from`), normalised by its reward_stats.json,
        less `<stage>.missing_eos_penalty` for an answer that never ended its turn (none of `stop_ids`, the policy's
    end-of-turn tokens). Returns it and the reward model's folder."""
    import torch

    from rlhf_cli.ppo.core import apply_eos_penalty

    spec = getattr(recipe, stage)
    path = resolve_model_dir(spec.reward_from, run_dir, "reward", f"{stage}.reward_from", recipe=recipe)
    scorer = reward_model_scorer(path, recipe, trust, precision)
    scorer.model.to(inference_device())  # beside the policy: TRL's trainers leave a reward function's model alone
    stops = set(stop_ids)

    def reward_model(prompts, completions, completion_ids, **_) -> list[float]:
        answers = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        finished = torch.tensor([any(t in stops for t in ids) for ids in completion_ids])
        return apply_eos_penalty(scorer(prompts, answers, finished), finished, spec.missing_eos_penalty).tolist()

    return reward_model, path
