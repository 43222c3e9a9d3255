"""The recipe schema: built-in names, --set overrides, unknown keys with the nearest match, trainer-config checks."""

from pathlib import Path

import pytest
import yaml

from rlhf_cli.recipe import BUILTIN_DIR, apply_overrides, builtin_names, load_recipe, save_resolved
from rlhf_cli.runtime.errors import UserError


def test_builtin_tiny_resolves_and_override_applies():
    rec = load_recipe("tiny", ["pretrain.training.max_steps=5", "ppo.kl_coef=0.2", "seed=3"])
    assert rec.pretrain.training["max_steps"] == 5
    assert rec.ppo.kl_coef == 0.2
    assert rec.seed == 3
    assert "tiny" in builtin_names()


def test_override_values_are_parsed_as_yaml():
    data = apply_overrides({}, ["a.b=1e-3", "a.c=[x, y]", "a.d=null", "a.e=true", "f=hello"])
    assert data == {"a": {"b": 1e-3, "c": ["x", "y"], "d": None, "e": True}, "f": "hello"}


def test_misspelt_section_key_names_the_nearest():
    with pytest.raises(UserError) as err:
        load_recipe("tiny", ["pretrain.trainng.max_steps=5"])
    assert "did you mean 'pretrain.training'" in str(err.value)


def test_misspelt_training_key_is_checked_against_the_trainer_config():
    with pytest.raises(UserError) as err:
        load_recipe("tiny", ["sft.training.learning_rte=0.1"])
    assert "sft.training.learning_rate" in str(err.value)
    assert "SFTConfig" in str(err.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(UserError) as err:
        load_recipe("tiny", ["model.sise=3", "seed=abc", "reward.training.max_stepz=2"])
    msg = str(err.value)
    assert "3 problems" in msg and "model.size" in msg and "seed" in msg and "reward.training.max_steps" in msg


def test_wrong_value_type_and_bad_override_syntax():
    with pytest.raises(UserError, match="feedback.k"):
        load_recipe("tiny", ["feedback.k=20"])
    with pytest.raises(UserError, match="key.path=value"):
        load_recipe("tiny", ["no_equals_sign"])


def test_missing_recipe_and_non_mapping_recipe(tmp_path):
    with pytest.raises(UserError, match="built-in"):
        load_recipe("tinny")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="mapping"):
        load_recipe(str(bad))


def test_path_recipe_and_resolved_copy(tmp_path):
    src = tmp_path / "mine.yaml"
    src.write_text("name: mine\nsft: {max_length: 64}\n")
    rec = load_recipe(str(src))
    assert rec.name == "mine" and rec.sft.max_length == 64
    out = save_resolved(rec, tmp_path / "run")
    again = yaml.safe_load(out.read_text())
    assert again["sft"]["max_length"] == 64 and again["tokenizer"]["from"] is None
    assert load_recipe(str(out)).model_dump() == rec.model_dump()


@pytest.mark.parametrize("path", sorted(Path(BUILTIN_DIR).glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    text = path.read_text()
    assert text.startswith("#"), "each recipe starts with a comment saying what it trains and how to run it"
    load_recipe(str(path))


def test_ppo_knob_set_twice_is_refused():
    with pytest.raises(UserError, match="both set"):
        load_recipe("tiny", ["ppo.training.kl_coef=0.1"])


def test_a_data_path_set_on_a_hub_recipe_replaces_the_hub_source():
    # The GPU recipes read the hub; pointing a stage at a local file must not keep the hub id or its split names.
    r = load_recipe("qwen-0.5b-rlhf-lora", ["sft.data.path=conversations.jsonl"])
    assert r.sft.data.path == "conversations.jsonl" and r.sft.data.hub is None
    assert r.sft.data.split == "train" and r.sft.data.eval_split is None
    both = load_recipe("qwen-0.5b-rlhf-lora", ["sft.data.path=c.jsonl", "sft.data.eval_split=test"])
    assert both.sft.data.eval_split == "test"  # set explicitly: kept
    hub = load_recipe("tiny", ["sft.data.hub=HuggingFaceH4/ultrachat_200k"])
    assert hub.sft.data.hub == "HuggingFaceH4/ultrachat_200k" and not hub.sft.data.toy


# PPO's algorithm keys are null in the recipe and take rlhf_cli.ppo.PPOConfig's defaults, which docs/recipes.md shows.
PPO_RESOLVED_LATER = {"kl_coef", "kl_estimator", "response_length", "temperature", "missing_eos_penalty", "ptx_coef"}


def test_recipe_reference_is_a_valid_recipe_of_the_defaults(tmp_path):
    # docs/recipes.md's "every key with its default" block must load, and its values must be the defaults it claims.
    from rlhf_cli.ppo.config import PPOConfig

    readme = (Path(__file__).parent.parent / "docs" / "recipes.md").read_text(encoding="utf-8")
    start = readme.index("```yaml\nname: my-run") + len("```yaml\n")
    block = readme[start : readme.index("```", start)]
    (tmp_path / "ref.yaml").write_text(block)
    (tmp_path / "bare.yaml").write_text("name: my-run\n")
    documented = load_recipe(str(tmp_path / "ref.yaml")).model_dump()
    defaults = load_recipe(str(tmp_path / "bare.yaml")).model_dump()
    shown = yaml.safe_load(block)
    for section, values in shown.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if key in ("data", "training"):
                continue
            if section == "ppo" and key in PPO_RESOLVED_LATER:
                assert value == PPOConfig.__dataclass_fields__[key].default, f"ppo.{key}"
                continue
            assert documented[section][key] == defaults[section][key], f"{section}.{key}"


@pytest.mark.parametrize(
    "override,message",
    [
        ("reward.training.per_device_train_batch_size=0", "whole number, 1 or more"),
        ("pretrain.training.gradient_accumulation_steps=0", "whole number, 1 or more"),
        ("pretrain.training.max_steps=abc", "must be a number"),
    ],
)
def test_training_values_torch_refuses_late_are_refused_early(tmp_path, override, message):
    # Refused when the trainer config is built, before any stage folder exists (and before --overwrite removes one).
    from rlhf_cli.stages.common import trainer_config

    rec = load_recipe("tiny", [override], check_training=False)
    stage = override.split(".")[0]
    with pytest.raises(UserError, match=message):
        trainer_config(rec, stage, tmp_path / stage)


def test_recipe_show_prints_resolved_values_and_the_files_reasons():
    """`rlhf recipe show tiny`: a YAML document with the values PPO's config resolves (no null where a stage fills one
    in), and beside tiny's own settings the reason its file's comment gives; a --set value loses the file's reason."""
    from typer.testing import CliRunner

    from rlhf_cli.cli import app
    from rlhf_cli.ppo.config import PPOConfig

    result = CliRunner().invoke(app, ["recipe", "show", "tiny", "--set", "pretrain.block_size=32"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert shown["ppo"]["temperature"] == PPOConfig.temperature == 0.9
    assert shown["ppo"]["kl_estimator"] == PPOConfig.kl_estimator
    assert shown["ppo"]["kl_coef"] == 0.3 and shown["ppo"]["response_length"] == 48  # tiny's own
    assert shown["model"]["hidden_size"] == 128  # the tiny size preset (modeling.SIZE_PRESETS)
    resolved = [f"ppo.{k}" for k in ("kl_estimator", "kl_horizon", "temperature", "missing_eos_penalty", "ptx_coef")]
    assert all(shown[s][k] is not None for s, k in (r.split(".") for r in resolved))
    lines, section = {}, ""
    for line in result.stdout.splitlines():
        section = section if line.startswith(" ") else line.split(":")[0]
        lines[f"{section}.{line.split(':')[0].strip()}"] = line
    text = (BUILTIN_DIR / "tiny.yaml").read_text(encoding="utf-8")
    comment = next(line for line in text.splitlines() if line.startswith("  response_length:")).split("# ", 1)[1]
    assert lines["ppo.response_length"].endswith(f"# {comment}")
    assert "#" not in lines["pretrain.block_size"]  # set by --set: the file's reason no longer applies
    assert "# PPOConfig's default" in lines["ppo.temperature"]


def test_readme_own_model_recipe_loads_as_printed(tmp_path):
    """The README's "your data and your model" recipe is a valid recipe that says what it claims."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("```yaml\n# my-run.yaml") + len("```yaml\n")
    (tmp_path / "my-run.yaml").write_text(readme[start : readme.index("```", start)])
    rec = load_recipe(str(tmp_path / "my-run.yaml"))
    assert rec.name == "my-run" and rec.sft.init_from == "Qwen/Qwen2.5-0.5B-Instruct" and rec.sft.lora.r == 16
    assert rec.feedback.data.path == "my_prompts.jsonl" and rec.ppo.data.path == "my_prompts.jsonl"


def test_every_link_of_the_readme_and_the_docs_points_to_a_file():
    import re

    root = Path(__file__).parent.parent
    pages = [root / "README.md", root / "bench" / "README.md", *sorted((root / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(root)} -> {target}")
    assert broken == []
