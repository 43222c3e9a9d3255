"""Shared test set-up."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _library_logs_to_real_stderr():
    """transformers' log handler keeps the stream it was made with; made inside a CliRunner call, that stream is closed
    by the next call ("--- Logging error ---" in a later test's output, whichever module runs first). Make the handler
    here, once, before any test, and bind it to the real stderr."""
    import logging as std_logging
    import sys

    from transformers.utils import logging

    for handler in logging.get_logger().handlers:  # the library root logger ("transformers")
        if type(handler) is std_logging.StreamHandler:  # not pytest's capture handlers, which must keep their buffer
            handler.stream = sys.__stderr__  # not setStream: it flushes the old stream, which may be closed already


# A run of every default step (pretrain ... report) of a very small model on the toy world: what the misuse and lock
# tests start from (tests/test_misuse.py, tests/test_lock.py). Built once per session (~30 s on 2 cores).
SMALL_RUN_RECIPE = {
    "name": "small",
    "seed": 0,
    "model": {"arch": "llama", "size": "tiny", "hidden_size": 32, "num_layers": 2, "num_heads": 2},
    "tokenizer": {"train": {"vocab_size": 400}},
    "pretrain": {"block_size": 32, "training": {"max_steps": 4, "per_device_train_batch_size": 4, "save_steps": 2}},
    "sft": {"max_length": 64, "eval_prompts": 4, "training": {"max_steps": 3, "per_device_train_batch_size": 4}},
    "feedback": {"num_prompts": 12, "k": 3, "max_new_tokens": 8, "batch_size": 16},
    "reward": {"max_length": 64, "training": {"max_steps": 3, "per_device_train_batch_size": 4, "save_steps": 2}},
    "ppo": {"response_length": 8, "eval_prompts": 4, "training": {"max_steps": 2, "per_device_train_batch_size": 4}},
    "eval": {"num_prompts": 4, "max_new_tokens": 8},
}


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A finished small run (every default step); copy it (`small_run`) before changing it."""
    import yaml
    from typer.testing import CliRunner

    from rlhf_cli.cli import app

    root = tmp_path_factory.mktemp("finished")
    recipe = root / "small.yaml"
    recipe.write_text(yaml.safe_dump(SMALL_RUN_RECIPE), encoding="utf-8")
    result = CliRunner().invoke(app, ["pipeline", "--recipe", str(recipe), "-o", str(root / "run")])
    assert result.exit_code in (0, 3), result.output  # 3: a model this small misses the targets
    return root / "run"


@pytest.fixture
def small_run(finished_run, tmp_path):
    """A copy of the finished small run at tmp_path/run (its own recipe.yaml is the recipe to pass)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run, symlinks=True)
    return run
