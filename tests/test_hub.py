"""Offline, a hub id fails at once with one sentence (no ~50 s of retries): the probe switches to offline mode."""

import socket

import pytest
from huggingface_hub import constants

from rlhf_cli.models import hub
from rlhf_cli.models.modeling import load_causal_lm, load_tokenizer
from rlhf_cli.runtime.errors import UserError


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(hub, "_reachable", None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # restored (unset) afterwards, though the probe sets it
    calls = []

    def no_request(*args, **kwargs):  # any HTTP request now would be the retry loop the probe avoids
        calls.append(args)
        raise AssertionError("an HTTP request was made in offline mode")

    import huggingface_hub.utils._http as http

    monkeypatch.setattr(http, "http_backoff", no_request)
    return calls


def test_unreachable_hub_switches_to_offline_and_says_what_to_do(no_network):
    with pytest.raises(UserError, match="hub cannot be reached from here; give a local model folder"):
        load_causal_lm("nobody-here/no-such-model")
    assert hub.reachable() is False and constants.HF_HUB_OFFLINE is True and no_network == []
    with pytest.raises(UserError, match="Cannot load a tokenizer from 'nobody-here/no-such-model'"):
        load_tokenizer("nobody-here/no-such-model")


def test_a_local_folder_never_probes(no_network, tmp_path):
    with pytest.raises(UserError, match="not a model folder"):
        load_causal_lm(str(tmp_path))
    assert hub.reachable() is None  # no probe for a path
