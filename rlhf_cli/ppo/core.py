"""The maths of PPO with a KL penalty, as pure functions on tensors (unit-tested against hand-computed values).

Shapes: `(batch, response_tokens)` for everything per token; `mask` is 1 on the answer's tokens (up to and including the
first end-of-text) and 0 after it. References: Ziegler et al. 2019 (KL-penalised reward, adaptive beta), Schulman et al.
2016 (GAE) and 2017 (clipped objective), Huang et al. 2024 "The N+ implementation details of RLHF with PPO" (EOS trick,
whitening, value clipping), Schulman 2020 "Approximating KL divergence" (k1, k3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries; `shift_mean=False` keeps the mean (used for rewards)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean


def response_mask(responses: torch.Tensor, eos_id) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, finished): mask is 1 up to and including the first end of turn — `eos_id`, one id or a list (the chat
    template's end-of-turn token and eos) — and everywhere when there is none."""
    stops = torch.as_tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), device=responses.device)
    is_eos = torch.isin(responses, stops)
    finished = is_eos.any(dim=1)
    # A token is valid while no end-of-text came strictly before it.
    eos_before = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
    return (~eos_before).long(), finished


def mask_after_eos(responses: torch.Tensor, eos_id, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(responses with every token after the first end of turn (`eos_id`: one id or several) set to `pad_id`, mask,
    finished)."""
    mask, finished = response_mask(responses, eos_id)
    return responses.masked_fill(mask == 0, pad_id), mask, finished


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last valid token of each row (where the score is paid)."""
    return (mask.sum(dim=1) - 1).clamp(min=0).long()


def apply_eos_penalty(scores: torch.Tensor, finished: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """Subtract `penalty` from the score of every answer that has no end-of-text (Huang et al. 2024's EOS trick)."""
    if not penalty:
        return scores
    return scores - penalty * (~finished.bool()).to(scores.dtype)


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled from the policy.

    k1 = log p - log q (unbiased, can be negative); k3 = (q/p - 1) - log(q/p) (unbiased, never negative).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl_estimator must be 'k1' or 'k3', not {estimator!r}")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, beta: float, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards: -beta * KL on every answer token, plus the sequence score on the last one."""
    rewards = -beta * kl * mask
    idx = last_token_index(mask)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, idx] += scores.to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over the valid tokens; returns (advantages, returns), zero where masked.

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last token is 0); A_t = delta_t + gamma * lam * A_{t+1}.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * mask


def policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float):
    """PPO's clipped surrogate; returns (loss, clip fraction, approximate KL old->new)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clipfrac, approx_kl


def value_loss(values, old_values, returns, mask, cliprange_value: float):
    """Clipped value loss 0.5 * max((V - R)^2, (V_clipped - R)^2); returns (loss, clip fraction)."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_loss, clipped_loss = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    clipfrac = masked_mean((clipped_loss > unclipped_loss).float(), mask)
    return loss, clipfrac


@dataclass
class KLController:
    """beta: fixed (target None) or adaptive toward `target` KL per answer (Ziegler et al. 2019, section 2.2).

    Each update: e = clip(KL / target - 1, -0.2, 0.2); beta *= 1 + e * n_episodes / horizon.
    """

    value: float
    target: float | None = None
    horizon: int = 10000

    def update(self, current_kl: float, n_episodes: int) -> float:
        if self.target is not None:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_episodes / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
