"""PPO's maths against values worked out by hand."""

import math

import pytest
import torch

from rlhf_cli.ppo import core


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


def test_masked_mean_and_whiten_ignore_masked_entries():
    x, mask = torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([1, 1, 1, 0])
    assert close(core.masked_mean(x, mask), 2.0)
    # mean 2, unbiased variance (1 + 0 + 1) / 2 = 1
    assert close(core.masked_whiten(x, mask)[:3], [-1.0, 0.0, 1.0])
    assert close(core.masked_whiten(x, mask, shift_mean=False)[:3], [1.0, 2.0, 3.0])


def test_mask_after_eos_keeps_the_first_eos_and_pads_the_rest():
    eos, pad = 9, 0
    responses = torch.tensor([[5, 6, 9, 7, 8], [5, 6, 7, 8, 4], [9, 5, 9, 5, 5]])
    cut, mask, finished = core.mask_after_eos(responses, eos, pad)
    assert cut.tolist() == [[5, 6, 9, 0, 0], [5, 6, 7, 8, 4], [9, 0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert finished.tolist() == [True, False, True]
    assert core.last_token_index(mask).tolist() == [2, 4, 0]


def test_eos_penalty_only_hits_unfinished_answers():
    scores, finished = torch.tensor([1.0, 0.5]), torch.tensor([True, False])
    assert close(core.apply_eos_penalty(scores, finished, 1.0), [1.0, -0.5])
    assert close(core.apply_eos_penalty(scores, finished, None), [1.0, 0.5])


def test_kl_estimators():
    p, q = torch.log(torch.tensor([0.5, 0.25, 0.3])), torch.log(torch.tensor([0.25, 0.5, 0.3]))
    assert close(core.kl_per_token(p, q, "k1"), [math.log(2), -math.log(2), 0.0])
    # k3 = (q/p - 1) - log(q/p)
    assert close(core.kl_per_token(p, q, "k3"), [-0.5 + math.log(2), 1.0 - math.log(2), 0.0])
    assert (core.kl_per_token(p, q, "k3") >= 0).all()
    with pytest.raises(ValueError):
        core.kl_per_token(p, q, "k2")


def test_token_rewards_pay_the_score_on_the_last_valid_token():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    rewards = core.token_rewards(torch.tensor([2.0]), kl, 0.5, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert close(rewards, [[-0.05, -0.1, 1.85, 0.0]])


def test_gae_by_hand():
    # gamma 1, lam 0.5: deltas (0, 0, 0.5) -> A = (0.125, 0.25, 0.5); returns = A + V
    adv, ret = core.gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.5, 0.5]]), torch.ones(1, 3), 1.0, 0.5)
    assert close(adv, [[0.125, 0.25, 0.5]]) and close(ret, [[0.625, 0.75, 1.0]])
    # gamma 0.9, lam 1, zero values: discounted reward-to-go
    adv, _ = core.gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.zeros(1, 3), torch.ones(1, 3), 0.9, 1.0)
    assert close(adv, [[0.81, 0.9, 1.0]])
    # the masked tail neither pays reward nor bootstraps a value
    adv, ret = core.gae(
        torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[0.5, 0.5, 9.0]]), torch.tensor([[1, 1, 0]]), 1.0, 0.5
    )
    assert close(adv, [[0.25, 0.5, 0.0]]) and close(ret, [[0.75, 1.0, 0.0]])


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    loss, clipfrac, approxkl = core.policy_loss(new, old, adv, torch.ones(1, 3), 0.2)
    # per token max(-A r, -A clip(r)): max(-1.5, -1.2) = -1.2; max(0.5, 0.8) = 0.8; -2.2 unclipped
    assert close(loss, (-1.2 + 0.8 - 2.2) / 3)
    assert close(clipfrac, 2 / 3)
    assert close(approxkl, 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 3)
    # masking a token removes it from the mean
    loss, _, _ = core.policy_loss(new, old, adv, torch.tensor([[1, 1, 0]]), 0.2)
    assert close(loss, (-1.2 + 0.8) / 2)


def test_clipped_value_loss_by_hand():
    loss, clipfrac = core.value_loss(
        torch.tensor([[0.5, -0.1]]), torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), 0.2
    )
    # token 1: clipped value 0.2 -> max(0.25, 0.64) = 0.64; token 2 inside the range: 1.21
    assert close(loss, 0.5 * (0.64 + 1.21) / 2)
    assert close(clipfrac, 0.5)


def test_adaptive_kl_controller():
    ctl = core.KLController(0.1, target=6.0, horizon=10000)
    assert math.isclose(ctl.update(9.0, 1000), 0.1 * 1.02)  # error clipped to +0.2
    assert math.isclose(ctl.update(5.7, 1000), 0.1 * 1.02 * 0.995)  # error -0.05
    state = ctl.state_dict()
    other = core.KLController(0.5, target=6.0)
    other.load_state_dict(state)
    assert other.value == ctl.value
    fixed = core.KLController(0.1)
    assert fixed.update(100.0, 1000) == 0.1
