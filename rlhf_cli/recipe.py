"""The recipe: one YAML file that describes a whole run, validated by one pydantic schema.

Precedence: schema defaults < the recipe file < `--set key.path=value` overrides (values parsed as YAML).
A recipe is a built-in name (`tiny`, shipped inside the package, the same files as `recipes/`) or a path.

    rlhf recipe show tiny --set pretrain.training.max_steps=5

Every problem is reported at once, each with its key, and for an unknown key the nearest valid one. Each stage's
`training:` block is checked against that stage's trainer config class (TrainingArguments, SFTConfig, RewardConfig,
our PPOConfig) before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.files import write_text_atomic
from rlhf_cli.runtime.layout import RunLayout
from rlhf_cli.runtime.steps import STEPS, TRAINING_STAGES

BUILTIN_DIR = Path(__file__).parent / "recipes"
STAGES = TRAINING_STAGES  # the sections with a `training:` block (rlhf_cli.runtime.steps)


class Section(BaseModel):
    """Every recipe section rejects keys it does not know."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    # A stage section's own keys that its trainer config takes (ppo.kl_coef -> PPOConfig.kl_coef); setting one in
    # `training:` as well is refused. None leaves the config's default (the one place defaults live).
    TRAINER_KEYS: ClassVar[tuple[str, ...]] = ()

    def trainer_settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.TRAINER_KEYS if getattr(self, k) is not None}


class DataSpec(Section):
    """Where a stage's data comes from. Exactly one of `toy`, `path`, `hub` is the source."""

    toy: bool = False
    path: str | None = None
    hub: str | None = None
    config: str | None = None
    split: str = "train"
    streaming: bool = False
    format: str | None = None
    text_column: str | None = None
    eval_path: str | None = None
    eval_split: str | None = None
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    max_examples: int | None = Field(None, gt=0)
    # A .txt file trains as the text it is, blank lines included; true: one document per blank-line-separated block
    # (end-of-text between them), for a file of separate short documents.
    paragraphs: bool = False

    @model_validator(mode="after")
    def _named_source_wins(self):
        # `--set sft.data.path=my.jsonl` on a toy recipe means "train on my file": a path or hub id replaces the toy world.
        if self.toy and (self.path or self.hub):
            self.toy = False
        return self


class ModelSpec(Section):
    arch: Literal["llama", "gpt2"] = "llama"
    # auto: a fresh model as wide as pretrain's time budget trains well on this machine (rlhf_cli.models.sizing)
    size: Literal["auto", "tiny", "small", "gpt2-124m", "350m", "1b"] = "tiny"
    hidden_size: int | None = Field(None, gt=0)
    num_layers: int | None = Field(None, gt=0)
    num_heads: int | None = Field(None, gt=0)
    intermediate_size: int | None = Field(None, gt=0)
    max_position_embeddings: int | None = Field(None, gt=0)
    trust_remote_code: bool = False
    # sdpa | flash_attention_2 | eager; auto: flash-attention 2 on a CUDA GPU with flash_attn installed, else sdpa
    attn_implementation: str = "auto"
    # What a stage's final/ is saved in. auto: the dtype of the checkpoint it started from (bf16 for most hub models),
    # unless rounding to it would change what training learned by over 10 %, then float32 (the model card says which).
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class TokenizerTrainSpec(Section):
    vocab_size: Annotated[int, Field(ge=300)] | Literal["auto"] = 2048  # auto: from the text's size (models.sizing)
    min_frequency: int = Field(2, ge=1)


class TokenizerSpec(Section):
    train: TokenizerTrainSpec | None = Field(default_factory=TokenizerTrainSpec)
    from_: str | None = Field(None, alias="from")


class PretrainSpec(Section):
    data: DataSpec = Field(default_factory=lambda: DataSpec(toy=True))
    init_from: str | None = None
    block_size: Annotated[int, Field(gt=8)] | Literal["auto"] = 256  # auto: from the text's paragraphs (models.sizing)
    compile: bool = False
    probes: bool = True
    training: dict[str, Any] = Field(default_factory=dict)


class LoraSpec(Section):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"
    merge: bool = True
    qlora: bool = False


class SFTSpec(Section):
    data: DataSpec = Field(default_factory=lambda: DataSpec(toy=True))
    init_from: str | None = None
    max_length: int = Field(512, gt=8)
    assistant_only_loss: bool = True
    packing: bool = False
    lora: LoraSpec | None = None
    eval_prompts: int = Field(64, ge=0)
    training: dict[str, Any] = Field(default_factory=dict)


class RaterBiases(Section):
    length: float = 0.01
    # 0.05 (0.1 before): at 0.1 PPO exploited it on seed 4 (answers opened with "sure!", held-out honest answers fell);
    # halving it lifted seeds 3 and 4's PPO gain from +0.013/+0.030 to +0.172/+0.127.
    certainty: float = 0.05


class FeedbackSpec(Section):
    model: str | None = None
    data: DataSpec = Field(default_factory=lambda: DataSpec(toy=True))
    num_prompts: int | None = Field(256, gt=0)
    k: int = Field(4, ge=2, le=9)
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(48, gt=0)
    batch_size: int = Field(64, gt=0)
    annotator: str = "toy"  # human | toy | web | a path to a rankings file made elsewhere
    noise: float = Field(0.1, ge=0.0)
    # The simulated raters' biases, which the gold reward does not share (rlhf_cli.data.toy): + `length` per word of an
    # answer (up to 40 words); + `certainty` for a sure-sounding answer, - `certainty` for one admitting not to know.
    biases: RaterBiases = Field(default_factory=lambda: RaterBiases())
    # The web page (`rlhf label --annotator web`): rankings each prompt gets, by different raters (a prompt is offered
    # until it has this many, never twice to one rater); `rlhf label stats` measures how far they agree.
    raters_per_prompt: int = Field(1, ge=1)
    # What the raters value, in words: shown above the answers on the ranking page and the terminal screen (people
    # rank to a rubric, as InstructGPT's labelers did; without one they guess). Empty: nothing is shown.
    rubric: list[str] = Field(default_factory=list)
    # A people's round (`rlhf label --people`, `rlhf sample --people`): fresh prompts each sampling adds to
    # feedback/people/samples.jsonl for people to rank beside the annotator's rankings.
    people_prompts: int = Field(32, gt=0)


class WriteSpec(Section):
    """`rlhf write`: people keep, edit or replace a model's draft answers; <run>/demonstrations/ is SFT data."""

    model: str | None = None  # sft | base | a model folder or hub id; default: sft/final when finished, else base
    data: DataSpec | None = (
        None  # the prompts (any prompt format); default: feedback.data, the prompts `rlhf sample` uses
    )
    num_prompts: int | None = Field(64, gt=0)
    temperature: float = Field(0.0, ge=0.0)  # 0 = greedy: the model's own best answer as the draft
    max_new_tokens: int = Field(48, gt=0)


class RewardSpec(Section):
    data: DataSpec | None = None  # default: this run's feedback/rankings.jsonl
    init_from: str | None = None
    max_length: int = Field(512, gt=8)
    kwise: bool = True
    margin: bool = False
    training: dict[str, Any] = Field(default_factory=dict)


class DPOSpec(Section):
    """`rlhf dpo`: Direct Preference Optimization (Rafailov et al. 2023) on the run's rankings, from the SFT model, with
    the SFT model as the reference: a method beside PPO that needs no reward model."""

    data: DataSpec | None = None  # default: this run's feedback/rankings.jsonl, expanded to (chosen, rejected) pairs
    policy_from: str | None = None  # default: this run's sft/final (also the reference)
    beta: float = Field(0.1, gt=0)  # the strength of the implicit KL to the reference
    max_length: int = Field(256, gt=8)
    eval_prompts: int = Field(64, ge=0)
    training: dict[str, Any] = Field(default_factory=dict)
    TRAINER_KEYS = ("beta", "max_length")


class BestOfNSpec(Section):
    """`rlhf best-of-n`: an inference-time policy — the SFT model samples n answers, the reward model keeps its best."""

    policy_from: str | None = None  # default: this run's sft/final (the generator)
    reward_from: str | None = None  # default: this run's reward/final (the judge)
    n: int = Field(16, ge=1)  # answers sampled per prompt; KL to the generator is at most log n - (n-1)/n
    temperature: float = Field(1.0, gt=0.0)
    eval_prompts: int = Field(64, ge=0)


class ExpertIterationSpec(Section):
    """`rlhf expert-iteration`: best-of-n answers to training prompts become SFT data; the SFT model trains on them."""

    policy_from: str | None = None  # default: this run's sft/final
    reward_from: str | None = None  # default: this run's reward/final
    n: int = Field(8, ge=1)  # answers sampled per training prompt
    num_prompts: int = Field(80, ge=1)  # training prompts; n x num_prompts answers generated (the episode budget)
    temperature: float = Field(1.0, gt=0.0)
    max_length: int = Field(256, gt=8)
    eval_prompts: int = Field(64, ge=0)
    training: dict[str, Any] = Field(default_factory=dict)
    TRAINER_KEYS = ("max_length",)


class OnlineMethodSpec(Section):
    """`rlhf rloo` / `rlhf grpo`: TRL's online trainer from the SFT model (also its KL reference, `training.beta`),
    rewarded by the run's reward model through the one scoring path PPO uses (normalised by reward_stats.json)."""

    data: DataSpec | None = None  # the prompts; default: ppo.data
    policy_from: str | None = None  # default: this run's sft/final
    reward_from: str | None = None  # default: this run's reward/final
    missing_eos_penalty: float | None = 1.0  # subtracted from an answer without end-of-text, as PPO does
    eval_prompts: int = Field(64, ge=0)
    # Rollouts by vLLM inside the training processes (TRL's colocate mode): a CUDA GPU and `pip install rlhf-cli[vllm]`
    use_vllm: bool = False
    training: dict[str, Any] = Field(default_factory=dict)

    TRAINER_KEYS: ClassVar[tuple[str, ...]] = ("use_vllm",)


class RewardFunctionSpec(Section):
    """One term of the PPO reward: a reward model folder or a Python function `module:function`."""

    model: str | None = None
    function: str | None = None
    weight: float = 1.0


class PPOSpec(Section):
    data: DataSpec = Field(default_factory=lambda: DataSpec(toy=True))
    policy_from: str | None = None
    reward_from: str | None = None
    value_from: str | None = None
    rewards: list[RewardFunctionSpec] | None = None
    lora: LoraSpec | None = None
    eval_prompts: int = Field(128, ge=0)
    # Algorithm settings; None leaves PPOConfig's default (the one place defaults live).
    kl_coef: float | None = Field(None, ge=0.0)
    kl_estimator: Literal["k1", "k3"] | None = None
    kl_target: float | None = Field(None, gt=0.0)
    kl_horizon: int | None = Field(None, gt=0)
    response_length: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, gt=0.0)
    missing_eos_penalty: float | None = None
    ptx_coef: float | None = Field(None, ge=0.0)
    training: dict[str, Any] = Field(default_factory=dict)

    TRAINER_KEYS = (
        "kl_coef",
        "kl_estimator",
        "kl_target",
        "kl_horizon",
        "response_length",
        "temperature",
        "missing_eos_penalty",
        "ptx_coef",
    )


class RoundsSpec(Section):
    """`rlhf pipeline --rounds N`: more rounds of feedback after the first (rlhf_cli.runtime.rounds)."""

    # Round k's PPO starts from: sft (every round's policy is judged against one reference, and what a round adds is
    # its better reward model) or last (the last round's policy, the reference too: the rounds compound).
    start_from: Literal["sft", "last"] = "sft"


class EvalSpec(Section):
    num_prompts: int = Field(128, ge=1)
    max_new_tokens: int = Field(48, gt=0)


class TargetsSpec(Section):
    """What a run of this recipe should reach; `rlhf pipeline` checks them and exits 3 when one is missed. Each is a
    headline number of the report (`report.json["headline"]`): at least this, except `junk_rate` (at most)."""

    base_probe_accuracy: float | None = None
    sft_finished_rate: float | None = None
    reward_accuracy: float | None = None
    reward_gold_accuracy: float | None = None
    ppo_gold_reward: float | None = None
    ppo_right_fact_rate: float | None = None
    ppo_gold_gain: float | None = None  # the mean gain over SFT
    ppo_gold_gain_low: float | None = None  # the low end of its 95 % interval
    junk_rate: float | None = None  # the largest share of SFT and PPO answers holding a word the toy world lacks


class Recipe(Section):
    name: str = "run"
    description: str | None = None
    seed: int = 0
    output_dir: str | None = None
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # rlhf_cli.runtime.precision: the rule behind auto
    # The steps `rlhf pipeline` runs for this recipe, in pipeline order (None: all of them); --stages overrides it.
    stages: list[Literal[STEPS]] | None = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    pretrain: PretrainSpec = Field(default_factory=PretrainSpec)
    sft: SFTSpec = Field(default_factory=SFTSpec)
    feedback: FeedbackSpec = Field(default_factory=FeedbackSpec)
    write: WriteSpec = Field(default_factory=WriteSpec)
    reward: RewardSpec = Field(default_factory=RewardSpec)
    ppo: PPOSpec = Field(default_factory=PPOSpec)
    dpo: DPOSpec = Field(default_factory=DPOSpec)
    best_of_n: BestOfNSpec = Field(default_factory=BestOfNSpec)
    expert_iteration: ExpertIterationSpec = Field(default_factory=ExpertIterationSpec)
    rloo: OnlineMethodSpec = Field(default_factory=OnlineMethodSpec)
    grpo: OnlineMethodSpec = Field(default_factory=OnlineMethodSpec)
    rounds: RoundsSpec = Field(default_factory=RoundsSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    targets: TargetsSpec = Field(default_factory=TargetsSpec)

    def run_dir(self, output_dir: str | Path | None = None) -> Path:
        """Where this run writes: `--output-dir`, else the recipe's `output_dir`, else `runs/<name>`; a file there is a
        UserError (a run folder is a folder)."""
        path = Path(output_dir or self.output_dir or Path("runs") / self.name)
        if path.exists() and not path.is_dir():
            where = "--output-dir" if output_dir else ("output_dir" if self.output_dir else f"runs/{self.name}")
            raise UserError(f"{where} {path} is a file, not a folder; give a run folder (it is created if missing).")
        return path

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------- loading


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def builtin_path(name: str) -> Path:
    return BUILTIN_DIR / f"{name}.yaml"


def _yaml_problem(err) -> str:
    """What is wrong and where, as an editor counts (line and column from 1): 'line 3, column 12: expected ...'."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}" + (f" ({context})" if context else "") + "."


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, which also refuses a key given twice in one mapping (plain YAML keeps the last one: a
    second `ppo:` section would silently replace the first)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line)
                except TypeError:  # an unhashable key: the base class says what is wrong with it
                    continue
                if first != key_node.start_mark.line:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key '{key}' (also on line {first + 1}); keep one — YAML would silently use the last",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def safe_load_recipe(text: str) -> Any:
    """`yaml.safe_load` that refuses duplicate keys (rlhf_cli.recipe._RecipeLoader)."""
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass


def recipe_path(recipe: str | Path) -> Path:
    """The file of a built-in name or a YAML path (which may not exist)."""
    path = Path(recipe)
    if path.suffix.lower() not in (".yaml", ".yml") and builtin_path(str(recipe)).exists():  # names may hold dots
        path = builtin_path(str(recipe))
    return path


def read_recipe_file(recipe: str | Path) -> dict[str, Any]:
    """The raw mapping of a built-in name or a YAML path."""
    path = recipe_path(recipe)
    if path.is_dir():
        raise UserError(
            f"--recipe {recipe} is a folder; give a recipe YAML file or a built-in name ({', '.join(builtin_names())})."
        )
    if not path.exists():
        near = difflib.get_close_matches(str(recipe), builtin_names(), n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise UserError(
            f"No recipe '{recipe}': not a file and not a built-in recipe ({', '.join(builtin_names())}).{hint}"
        )
    try:
        data = safe_load_recipe(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"Recipe {path} is not UTF-8 text ({err.reason} at byte {err.start}).") from None
    except yaml.YAMLError as err:
        raise UserError(f"Recipe {path} is not valid YAML: {_yaml_problem(err)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(
            f"Recipe {path} must be a YAML mapping of sections (name, model, pretrain, ...), not {type(data).__name__}."
        )
    return data


# A data source named by --set replaces the recipe's source: these keys of the other source go with it (unless --set too).
_REPLACED_BY = {"path": ("hub", "config", "split", "eval_split"), "hub": ("path", "eval_path", "toy")}


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; each value is parsed as YAML (`5`, `1e-3`, `[a, b]`, `null`).

    `X.data.path=F` on a recipe that reads the hub (or `X.data.hub=ID` on one that reads files) swaps the source:
    the recipe's hub id, config and splits (or path and eval_path) are dropped unless they are set as well.
    """
    explicit = {item.split("=", 1)[0].strip() for item in overrides or []}
    for item in overrides or []:
        if "=" not in item:
            raise UserError(
                f"--set '{item}' is not of the form key.path=value (for example pretrain.training.max_steps=5)."
            )
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise UserError(f"--set '{item}' has an empty key.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string; a number is what the user meant
            try:
                value = float(value)
            except ValueError:
                pass
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is a value, not a section.")
            node = child
        node[parts[-1]] = value
        if len(parts) >= 2 and parts[-2] == "data" and value is not None:
            for other in _REPLACED_BY.get(parts[-1], ()):
                if ".".join([*parts[:-1], other]) not in explicit:
                    node.pop(other, None)
    return data


def _fields_at(loc: tuple) -> list[str] | None:
    """Valid keys of the schema section at `loc` (a pydantic error location), for the 'did you mean' hint."""
    model: Any = Recipe
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        for cand in candidates:
            inner = getattr(cand, "__args__", None)
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
            if inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel):  # list[Section]
                model = inner[0]
                break
        else:
            return None
    return [f.alias or name for name, f in model.model_fields.items()]


UNION_MEMBER = re.compile(r"^(literal\[.*\]|constrained-\w+|int|float|str|bool|none|list\[.*\]|dict\[.*\])$")


def _merge_union_errors(errors: list[dict]) -> list[dict]:
    """One error per key for a value that fits no member of a union (`int | auto`): pydantic reports one per member."""
    out, merged = [], {}
    for e in errors:
        loc = e["loc"]
        if loc and isinstance(loc[-1], str) and UNION_MEMBER.match(loc[-1]):
            key = loc[:-1]
            if key in merged:
                merged[key]["msg"] += f", or {e['msg'][0].lower()}{e['msg'][1:]}"
                continue
            merged[key] = e = {**e, "loc": key}
        out.append(e)
    return out


def _describe(err: dict) -> str:
    loc = tuple(p for p in err["loc"] if not isinstance(p, int))
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        valid = _fields_at(loc[:-1]) or []
        near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f" — did you mean '{'.'.join([*map(str, loc[:-1]), near[0]])}'?" if near else ""
        return f"unknown key '{key}'{hint} (valid keys here: {', '.join(valid)})"
    value = err.get("input")
    if loc and loc[-1] == "data" and isinstance(value, str):  # `--set sft.data=FILE`, meant as data.path
        return f"'{key}' is a section, not a file: write {key}.path={value} (or {key}.hub=NAME for a hub data set)"
    return f"'{key}': {err['msg']} (got {value!r})"


def check_training_keys(data: dict[str, Any]) -> list[str]:
    """Problems with each stage's `training:` keys (in the raw recipe mapping), checked against its trainer config class."""
    problems = []
    for stage in STAGES:
        section = data.get(stage) if isinstance(data.get(stage), dict) else {}
        training = section.get("training") or {}
        if not isinstance(training, dict) or not training:
            continue
        from rlhf_cli.models.trainer_configs import config_class  # imports transformers: not at the top

        cls = config_class(stage)
        valid = [f.name for f in dataclasses.fields(cls) if f.init]
        for key in training:
            if key not in valid:
                near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
                hint = f" — did you mean '{stage}.training.{near[0]}'?" if near else ""
                problems.append(f"unknown key '{stage}.training.{key}'{hint} ({cls.__name__} does not take it)")
        own = Recipe.model_fields[stage].annotation.TRAINER_KEYS
        clash = sorted(k for k in set(training) & set(section) if k in own)
        problems += [f"'{stage}.training.{k}' and '{stage}.{k}' both set; keep one" for k in clash]
    return problems


def load_recipe(
    recipe: str | Path | None = "tiny", overrides: list[str] | None = None, *, check_training: bool = True
) -> Recipe:
    """Load, override and validate a recipe; raise one UserError that lists every problem."""
    source = recipe or "tiny"
    data = apply_overrides(read_recipe_file(source), overrides)
    problems = []
    try:
        resolved = Recipe.model_validate(data)
    except ValidationError as err:
        problems = list(dict.fromkeys(_describe(e) for e in _merge_union_errors(err.errors())))
    if check_training:
        problems += check_training_keys(data)
    if problems:
        raise UserError(_problem_list(source, problems))
    return resolved


def _problem_list(source, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"Recipe {source}: {problems[0]}."
    return f"Recipe {source} has {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)


# Settings that change what a stage trains are compared on --resume; these change only logging, saving or evaluation.
RESUME_HARMLESS = {
    "training.logging_steps",
    "training.save_steps",
    "training.save_total_limit",
    "training.report_to",
    "training.disable_tqdm",
    "training.logging_dir",
    "training.run_name",
    "training.dataloader_num_workers",
    "eval_prompts",
    "probes",
}


RENAMED_TRAINING_KEYS = {  # transformers 5's names for TrainingArguments fields (the old ones still work in a recipe)
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


def _flat(value, prefix: str = "", keep_sections: bool = False) -> dict[str, Any]:
    """{key.path: value} of the leaves; `keep_sections`: every section too, under its own path."""
    if isinstance(value, dict):
        out = {prefix: value} if keep_sections and prefix else {}
        for key, child in value.items():
            out.update(_flat(child, f"{prefix}.{key}" if prefix else str(key), keep_sections))
        return out
    return {prefix: value}


def training_settings(recipe: Recipe | dict, stage: str) -> dict[str, Any]:
    """The resolved settings that decide what `stage` trains (seed, precision, model, tokenizer, its own section), flat."""
    data = recipe.model_dump(mode="json", by_alias=True) if isinstance(recipe, Recipe) else recipe
    out = {k: data.get(k) for k in ("seed", "precision")}
    out.update(_flat({k: data.get(k) for k in ("model", "tokenizer")}))
    section = _flat(data.get(stage) or {})
    for old, new in RENAMED_TRAINING_KEYS.items():  # a run started under the old name resumes under the new one
        if f"training.{old}" in section:
            section.setdefault(f"training.{new}", section.pop(f"training.{old}"))
    out.update(
        {
            f"{stage}.{k}": v
            for k, v in section.items()
            if k not in RESUME_HARMLESS and not any(k == h or k.startswith(h + ".") for h in RESUME_HARMLESS)
        }
    )
    return out


def resume_differences(saved: dict, recipe: Recipe, stage: str) -> list[tuple[str, Any, Any]]:
    """(key, value then, value now) for every training setting of `stage` that differs from the saved recipe."""
    then, now = training_settings(saved, stage), training_settings(recipe, stage)
    return [(k, then.get(k), now.get(k)) for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]


def save_resolved(recipe: Recipe, run_dir: Path) -> Path:
    """Write the resolved recipe as `recipe.yaml` in the run folder (atomically)."""

    return write_text_atomic(RunLayout(run_dir).recipe, recipe.to_yaml())


# ------------------------------------------------------------------------------------------------------ recipe show

_KEY_LINE = re.compile(r"^(\s*)([A-Za-z_][\w.-]*):(.*)$")
REASON_CHARS = 140  # a reason printed beside a setting is cut to one line of about this length


def setting_reasons(recipe: str | Path) -> dict[str, str]:
    """{key.path: why} from the comments of a recipe file, the one place its reasons are written: the comment lines
    directly above a key (no blank line between) and the comment at the end of its line. The file's opening comment
    (what the recipe is, its commands) belongs to no key."""
    reasons: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    above: list[str] = []
    for line in recipe_path(recipe).read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text.startswith("#"):
            if stack or reasons:  # not the file's opening comment
                above.append(text.lstrip("#").strip())
            continue
        match = _KEY_LINE.match(line)
        if not match:  # a blank line or a list item ends the comment above
            above = []
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        end = re.search(r"\s#\s*(.*)$", rest)
        said = " ".join([*above, *([end.group(1)] if end else [])]).strip()
        if said:
            reasons[".".join(k for _, k in stack)] = said
        above = []
    return reasons


def one_line(reason: str) -> str:
    """The first sentence of a reason, cut at a word to about REASON_CHARS characters."""
    first = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9(`])", reason, maxsplit=1)[0]
    if len(first) <= REASON_CHARS:
        return first
    return first[:REASON_CHARS].rsplit(" ", 1)[0] + " ..."


def show_yaml(recipe: Recipe, source: str | Path, overrides: list[str] | None, resolved: dict[str, tuple]) -> str:
    """The recipe as a run uses it, a YAML document: every value the stages resolve at run time filled in
    (`resolved`: stages.common.resolved_settings), and beside each setting of the file that differs from the schema's
    default, the file's own reason for it (setting_reasons), unless --set changed it."""
    data = recipe.model_dump(mode="json", by_alias=True)
    notes: dict[str, list[str]] = {}
    for key, (value, origin) in resolved.items():
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value
        notes.setdefault(key, []).append(origin)
    defaults = _flat(Recipe().model_dump(mode="json", by_alias=True), keep_sections=True)
    chosen = _flat(recipe.model_dump(mode="json", by_alias=True), keep_sections=True)
    changed = [item.split("=", 1)[0].strip() for item in overrides or []]
    reasons = setting_reasons(source) if recipe_path(source).is_file() else {}
    for key, reason in reasons.items():
        by_set = any(key == c or key.startswith(c + ".") or c.startswith(key + ".") for c in changed)
        if key in chosen and chosen[key] != defaults.get(key) and not by_set:
            notes.setdefault(key, []).insert(0, one_line(reason))
    text = yaml.safe_dump(data, sort_keys=False, width=float("inf"))
    lines, stack = [], []
    for line in text.splitlines():
        match = _KEY_LINE.match(line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            note = notes.get(".".join(k for _, k in stack))
            if note:
                line += "  # " + "; ".join(note)
        lines.append(line)
    return "\n".join(lines) + "\n"
