"""`PPOTrainer`: PPO with a KL penalty on transformers + accelerate, in TRL's idiom (a config, a trainer, `train()`).

Each PPO step: roll out one batch of prompts (batched, left-padded, KV cache), cut answers after the first end-of-text,
score them (reward models and/or Python functions, weighted), pay -beta*KL per token and the score on the last token,
estimate advantages with GAE from the value model, then optimise the clipped policy and value losses for
`num_ppo_epochs` epochs over mini-batches. Checkpoints hold everything a resume needs (accelerate's `save_state`:
weights, optimiser, scheduler, KL controller, RNG; `trainer_state.json`: step, episodes, beta) and are renamed into
place only when complete.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from rlhf_cli.models.generation import generate, left_pad, render_prompts
from rlhf_cli.models.modeling import end_of_turn_ids, merged, save_model
from rlhf_cli.models.scoring import score
from rlhf_cli.people.feedback import prompt_text  # the user's side, as the annotator and the gold reward read it
from rlhf_cli.ppo import core
from rlhf_cli.ppo.config import PPOConfig
from rlhf_cli.runtime.callbacks import NonFiniteLoss, StopOnSignal
from rlhf_cli.runtime.distributed import whole_model
from rlhf_cli.runtime.errors import UserError
from rlhf_cli.runtime.runs import Interrupted

# ------------------------------------------------------------------------------------------------------ rewards


def load_function(ref: str):
    """`module:function` -> the function (a user's reward)."""
    module_name, _, name = ref.partition(":")
    if not module_name or not name:
        raise UserError(
            f"Reward function '{ref}' must be written module:function (for example my_rewards:length_bonus)."
        )
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"Cannot import reward function '{ref}': {err}. Is the module on PYTHONPATH?") from None
    if not callable(fn):
        raise UserError(f"Reward function '{ref}' is not callable.")
    return fn


class FunctionReward:
    """A Python reward f(prompts: list[str], answers: list[str], finished: list[bool]) -> list[float]."""

    def __init__(self, fn, name: str = "function"):
        self.fn, self.name = fn, name

    def __call__(self, prompts, answers, finished) -> torch.Tensor:
        scores = self.fn([prompt_text(p) for p in prompts], answers, finished)
        if len(scores) != len(answers):
            raise UserError(f"Reward function {self.name} returned {len(scores)} scores for {len(answers)} answers.")
        return torch.tensor([float(s) for s in scores])


class RewardModelScorer:
    """A sequence-classification reward model; the conversation is re-rendered as text with the reward model's own
    tokenizer and chat template (so its tokenizer may differ from the policy's), scores normalised by `mean`/`std`."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        mean: float = 0.0,
        std: float = 1.0,
        max_length: int = 512,
        batch_size: int = 64,
        name: str = "reward_model",
        precision: str = "auto",
    ):
        self.model, self.tokenizer, self.name, self.precision = model.eval(), tokenizer, name, precision
        self.mean, self.std, self.max_length, self.batch_size = mean, std or 1.0, max_length, batch_size

    @torch.no_grad()
    def __call__(self, prompts, answers, finished) -> torch.Tensor:

        raw = score(
            self.model,
            self.tokenizer,
            prompts,
            answers,
            max_length=self.max_length,
            batch_size=self.batch_size,
            precision=self.precision,
        )
        return (torch.tensor(raw) - self.mean) / self.std


# ------------------------------------------------------------------------------------------------------ models


def token_values(value_model, input_ids, attention_mask, position_ids) -> torch.Tensor:
    """Per-token values from a sequence-classification model: its score head on every hidden state."""
    backbone = getattr(value_model, value_model.base_model_prefix)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    return value_model.score(hidden).squeeze(-1).float()


def position_ids_of(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip the left padding, as `generate` computes them."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


class PolicyAndValue(nn.Module):
    """Policy and value model in one module: one optimiser, one DDP/DeepSpeed wrapper, one forward."""

    is_gradient_checkpointing = False

    def __init__(self, policy, value_model):
        super().__init__()
        self.policy, self.value_model = policy, value_model

    def forward(self, input_ids, attention_mask, ptx_ids=None, logits_to_keep: int = 0):
        """Logits of the last `logits_to_keep` positions (0: all; PPO keeps the answer's: at 150k tokens of vocabulary
        a prompt's logits are most of the memory), values at every position, and PPO-ptx's language-model loss."""
        pos = position_ids_of(attention_mask)
        logits = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=pos,
            use_cache=False,
            logits_to_keep=logits_to_keep,
        ).logits
        values = token_values(self.value_model, input_ids, attention_mask, pos)
        ptx_loss = self.policy(input_ids=ptx_ids, labels=ptx_ids, use_cache=False).loss if ptx_ids is not None else None
        return logits, values, ptx_loss


# ------------------------------------------------------------------------------------------------------ trainer


class PPOTrainer:
    """PPO with a KL penalty.

    Args:
        args: the PPOConfig.
        processing_class: the policy's tokenizer (with a chat template and a pad token).
        model: the policy, a causal LM (a peft model for LoRA; then `ref_model` is None and the reference is the
            policy with its adapter disabled).
        ref_model: the frozen reference (the SFT model), or None with LoRA.
        value_model: a sequence-classification model (num_labels=1) on the policy's tokenizer.
        reward_funcs: [(scorer, weight)], each scorer(prompts, answers, finished) -> tensor of scores.
        train_dataset: rows {"prompt": messages}.
        ptx_blocks: optional LongTensor (n, block) of pre-training text for PPO-ptx (`ptx_coef` > 0).
        metrics_path: where the main process appends one JSON line per step.
        monitors: {name: f(prompts, answers, finished) -> list of floats}, logged as `objective/<name>` each step
            and never rewarded (the toy world's gold reward: what the reward model stands in for).
    """

    def __init__(
        self,
        args: PPOConfig,
        processing_class,
        model,
        ref_model,
        value_model,
        reward_funcs,
        train_dataset,
        ptx_blocks: torch.Tensor | None = None,
        metrics_path: str | Path | None = None,
        monitors: dict | None = None,
    ):
        from accelerate import Accelerator
        from transformers import get_scheduler
        from trl.trainer.utils import disable_dropout_in_model

        self.args, self.tokenizer = args, processing_class
        self.stop_ids = end_of_turn_ids(processing_class)  # where the chat template ends an assistant turn
        self.prompts = [row["prompt"] for row in train_dataset]
        self.reward_funcs = reward_funcs
        self.monitors = monitors or {}
        self.metrics_path = Path(metrics_path) if metrics_path else None
        report_to = [r for r in (args.report_to or []) if r != "none"]
        from accelerate.utils import GradientAccumulationPlugin

        self.accelerator = acc = Accelerator(
            # a plugin, not the number: `accelerate launch` with a DeepSpeed config exports "auto" for it, which
            # Accelerator(gradient_accumulation_steps=...) would read from the environment and fail on
            gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=args.gradient_accumulation_steps),
            mixed_precision="bf16" if args.bf16 else "no",
            log_with=report_to or None,
        )
        if report_to:
            acc.init_trackers("rlhf-ppo", config=args.to_dict())
        self.is_peft = ref_model is None
        for m in (model, ref_model, value_model, *(getattr(f, "model", None) for f, _ in reward_funcs)):
            if m is not None:
                disable_dropout_in_model(m)

        # Batch sizes (TRL's definitions): a mini-batch is one optimiser step, the rollout batch is num_mini_batches
        # of them; on every process.
        self.mini_batch_size = args.per_device_train_batch_size * args.gradient_accumulation_steps
        self.local_batch_size = self.mini_batch_size * args.num_mini_batches
        self.batch_size = self.local_batch_size * acc.num_processes
        if args.total_episodes:
            self.num_steps = math.ceil(args.total_episodes / self.batch_size)
        elif args.max_steps > 0:
            self.num_steps = args.max_steps
        else:
            self.num_steps = math.ceil(args.num_train_epochs * len(self.prompts) / self.batch_size)
        num_updates = self.num_steps * args.num_ppo_epochs * args.num_mini_batches

        torch.manual_seed(args.seed)
        if args.activation_checkpointing:  # recompute activations in the update; generation runs in eval mode, cached
            kwargs = args.activation_checkpointing_kwargs or {"use_reentrant": False}
            for m in (model, value_model):
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
                if hasattr(m, "enable_input_require_grads"):
                    m.enable_input_require_grads()
        wrapper = PolicyAndValue(model, value_model)
        params = [p for p in wrapper.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params,
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.weight_decay,
        )
        self.scheduler = get_scheduler(
            args.lr_scheduler_type,
            optimizer,
            num_warmup_steps=args.get_warmup_steps(num_updates),
            num_training_steps=num_updates,
        )
        _fill_deepspeed_auto(acc, args)  # no DataLoader passes through prepare for DeepSpeed to read them from
        self.model, self.optimizer = acc.prepare(wrapper, optimizer)
        self.kl_ctl = core.KLController(args.kl_coef, args.kl_target, args.kl_horizon)
        acc.register_for_checkpointing(self.scheduler, self.kl_ctl)

        self.ref_model = self._prepare_frozen(ref_model)
        for fn, _ in reward_funcs:
            if getattr(fn, "model", None) is not None:
                fn.model = self._prepare_frozen(fn.model)
        self.ptx_blocks = ptx_blocks
        self.step, self.episode = 0, 0
        if acc.num_processes > 1:  # each process samples its own answers (the same seed would draw the same ones)
            torch.manual_seed(args.seed + acc.process_index)
        self.signals = StopOnSignal("PPO step")

    def _prepare_frozen(self, model):
        """A frozen model (reference, reward model) for the engine: DeepSpeed's inference engine (sharded under
        ZeRO-3), FSDP-sharded under FSDP (TRL's prepare_deepspeed / prepare_fsdp), else on this process's device."""
        if model is None:
            return None
        model.requires_grad_(False)
        if self.accelerator.state.deepspeed_plugin is not None:
            from trl.models.utils import prepare_deepspeed

            return prepare_deepspeed(model, self.accelerator)
        if getattr(self.accelerator.state, "fsdp_plugin", None) is not None:
            from trl.models.utils import prepare_fsdp

            return prepare_fsdp(model.to(self.accelerator.device), self.accelerator)
        return model.to(self.accelerator.device).eval()

    # -------------------------------------------------------------------------------------------- pieces

    @property
    def policy(self):
        return self.accelerator.unwrap_model(self.model).policy

    @contextlib.contextmanager
    def whole_policy(self):
        """The policy, usable on this process for generation and scoring: ZeRO-3's partitions gathered; under FSDP2
        the root unit's own parameters (the embeddings, the heads: the units' blocks gather in their own hooks)
        unsharded, since a call to `.policy` bypasses the root's hooks. Every process must take part."""
        from torch.distributed.fsdp import FSDPModule

        with whole_model(self.model, self.accelerator) as unwrapped:
            root = self.model if isinstance(self.model, FSDPModule) else None
            if root is not None:
                root.unshard()
            try:
                yield unwrapped.policy
            finally:
                if root is not None:
                    root.reshard()

    @contextlib.contextmanager
    def reference(self):
        """The reference model: the frozen SFT copy, or (LoRA) the policy with its adapter disabled."""
        if self.ref_model is not None:
            yield self.ref_model
        else:
            with self.policy.disable_adapter():
                yield self.policy

    def batch_prompts(self, step: int) -> list[list[dict]]:
        """This process's prompts for PPO step `step`: a seeded reshuffle per pass over the data, so the data position
        is just the step number (what a resume needs)."""
        n, start = len(self.prompts), step * self.batch_size + self.accelerator.process_index * self.local_batch_size
        out, perms = [], {}
        for pos in range(start, start + self.local_batch_size):
            epoch = pos // n
            if epoch not in perms:
                perms[epoch] = torch.randperm(
                    n, generator=torch.Generator().manual_seed(self.args.seed + epoch)
                ).tolist()
            out.append(self.prompts[perms[epoch][pos % n]])
        return out

    @torch.no_grad()
    def generate(self, prompts: list[list[dict]], temperature: float):
        """Sample answers: (query ids, query mask, responses cut after EOS, response mask, finished, answer texts)."""
        tok, args = self.tokenizer, self.args
        queries, qmask = left_pad(render_prompts(tok, prompts), tok.pad_token_id)
        queries, qmask = queries.to(self.accelerator.device), qmask.to(self.accelerator.device)
        chunks = []
        # Under the training precision, like every forward of the step (the policy's own forward is autocast by
        # accelerate's wrapper; generate and the reference bypass it).
        with self.whole_policy() as policy, self.accelerator.autocast():
            policy.eval()
            for i in range(0, len(prompts), args.local_rollout_forward_batch_size):
                sl = slice(i, i + args.local_rollout_forward_batch_size)
                out = generate(
                    policy,
                    queries[sl],
                    qmask[sl],
                    max_new_tokens=args.response_length,
                    temperature=temperature,
                    top_p=args.top_p,
                    eos_token_id=self.stop_ids,
                    pad_token_id=tok.pad_token_id,
                )
                resp = out[:, queries.shape[1] :]
                chunks.append(
                    nn.functional.pad(resp, (0, args.response_length - resp.shape[1]), value=tok.pad_token_id)
                )
            policy.train()
        responses, mask, finished = core.mask_after_eos(torch.cat(chunks), self.stop_ids, tok.pad_token_id)
        width = max(int(mask.sum(1).max()), 1)  # drop the columns that are padding in every row
        responses, mask = responses[:, :width], mask[:, :width]
        texts = [
            tok.decode(r[: int(m.sum())][: int(m.sum()) - int(f)], skip_special_tokens=True).strip()
            for r, m, f in zip(responses.tolist(), mask, finished, strict=True)
        ]
        return queries, qmask, responses, mask, finished, texts

    def _forward_logprobs(self, model, query_responses, attention_mask, context: int, values: bool = False):
        """Log-probabilities of the response tokens (at the sampling temperature), and optionally values, in chunks.
        Only the answer's logits are computed (`logits_to_keep`), and only their log-softmax, row by row (TRL's
        selective_log_softmax), is taken in fp32."""
        from trl.trainer.utils import selective_log_softmax

        logps, vals = [], []
        step = self.args.local_rollout_forward_batch_size
        keep = query_responses.shape[1] - context + 1  # the logits predicting each answer token, and one more
        for i in range(0, len(query_responses), step):
            ids, am = query_responses[i : i + step], attention_mask[i : i + step]
            if values:
                logits, v, _ = model(ids, am, logits_to_keep=keep)
                vals.append(v[:, context - 1 : -1])
            else:
                logits = model(
                    input_ids=ids,
                    attention_mask=am,
                    position_ids=position_ids_of(am),
                    use_cache=False,
                    logits_to_keep=keep,
                ).logits
            logits = logits[:, :-1].float() / (self.args.temperature + 1e-7)
            logps.append(selective_log_softmax(logits, ids[:, context:]))
        return torch.cat(logps), (torch.cat(vals) if values else None)

    def score(self, prompts, texts, finished) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted sum of every reward source, and each source's mean."""
        total, parts = torch.zeros(len(texts)), {}
        fin = finished.tolist()
        for fn, weight in self.reward_funcs:
            s = fn(prompts, texts, fin).float()
            parts[f"reward/{getattr(fn, 'name', 'reward')}"] = float(s.mean())
            total += weight * s
        return total.to(self.accelerator.device), parts

    @torch.no_grad()
    def sequence_kl(self, prompts: list[list[dict]]) -> tuple[list[float], list[int]]:
        """KL(policy || reference) summed over each sampled answer's tokens (k1), and the answer lengths."""
        queries, qmask, responses, mask, _, _ = self.generate(prompts, self.args.temperature)
        qr, am = torch.cat([queries, responses], 1), torch.cat([qmask, mask], 1)
        with self.accelerator.autocast(), self.whole_policy() as policy:
            logps, _ = self._forward_logprobs(policy, qr, am, queries.shape[1])
            with self.reference() as ref:
                ref_logps, _ = self._forward_logprobs(ref, qr, am, queries.shape[1])
        kl = (core.kl_per_token(logps, ref_logps, "k1") * mask).sum(1)
        return kl.tolist(), mask.sum(1).tolist()

    # -------------------------------------------------------------------------------------------- one step

    def ppo_step(self) -> dict[str, float]:
        args, acc, dev = self.args, self.accelerator, self.accelerator.device
        t0 = time.time()
        self.model.eval()
        prompts = self.batch_prompts(self.step)
        queries, qmask, responses, mask, finished, texts = self.generate(prompts, args.temperature)
        context = queries.shape[1]
        qr, am = torch.cat([queries, responses], 1), torch.cat([qmask, mask], 1)
        with torch.no_grad():
            with acc.autocast():  # the reference and the reward model in the policy's precision: KL 0 at step 0
                logprobs, values = self._forward_logprobs(self.model, qr, am, context, values=True)
                with self.reference() as ref:
                    ref_logprobs, _ = self._forward_logprobs(ref, qr, am, context)
                raw_scores, parts = self.score(prompts, texts, finished)
            scores = core.apply_eos_penalty(raw_scores, finished.to(dev), args.missing_eos_penalty)
            maskf = mask.float()
            kl = core.kl_per_token(logprobs, ref_logprobs, args.kl_estimator) * maskf
            beta = self.kl_ctl.value
            rewards = core.token_rewards(scores, kl, beta, maskf)
            if args.whiten_rewards:
                rewards = core.masked_whiten(rewards, maskf, shift_mean=False) * maskf
            values = values * maskf
            advantages, returns = core.gae(rewards, values, maskf, args.gamma, args.lam)
            advantages = core.masked_whiten(advantages, maskf) * maskf
        rollout_time = time.time() - t0

        self.model.train()
        stats: dict[str, list] = {
            k: [] for k in ("pg_loss", "vf_loss", "pg_clipfrac", "vf_clipfrac", "approxkl", "entropy", "ptx_loss")
        }
        gen = torch.Generator().manual_seed(args.seed * 100003 + self.step)
        micro = args.per_device_train_batch_size
        from trl.trainer.utils import entropy_from_logits, selective_log_softmax

        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(self.local_batch_size, generator=gen).to(dev)
            for start in range(0, self.local_batch_size, micro):
                idx = order[start : start + micro]
                with acc.accumulate(self.model):
                    ptx = self._ptx_batch() if args.ptx_coef > 0 and self.ptx_blocks is not None else None
                    keep = qr.shape[1] - context + 1  # only the answer's logits
                    logits, vpred, ptx_loss = self.model(qr[idx], am[idx], ptx_ids=ptx, logits_to_keep=keep)
                    logits = logits[:, :-1].float() / (args.temperature + 1e-7)
                    new_logprobs = selective_log_softmax(logits, responses[idx])
                    m = maskf[idx]
                    pg_loss, pg_clip, approxkl = core.policy_loss(
                        new_logprobs, logprobs[idx], advantages[idx], m, args.cliprange
                    )
                    vf_loss, vf_clip = core.value_loss(
                        vpred[:, context - 1 : -1], values[idx], returns[idx], m, args.cliprange_value
                    )
                    loss = pg_loss + args.vf_coef * vf_loss
                    if ptx_loss is not None:
                        loss = loss + args.ptx_coef * ptx_loss
                    if not torch.isfinite(loss):
                        raise NonFiniteLoss("ppo", self.step + 1, float(loss))
                    acc.backward(loss)
                    if acc.sync_gradients and args.max_grad_norm:
                        acc.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                    self.optimizer.step()  # a no-op until the mini-batch's last micro-batch
                    if acc.sync_gradients:
                        self.scheduler.step()
                    self.optimizer.zero_grad()
                with torch.no_grad():
                    stats["entropy"].append(core.masked_mean(entropy_from_logits(logits.detach()), m))
                for k, v in (
                    ("pg_loss", pg_loss),
                    ("vf_loss", vf_loss),
                    ("pg_clipfrac", pg_clip),
                    ("vf_clipfrac", vf_clip),
                    ("approxkl", approxkl),
                    ("ptx_loss", ptx_loss),
                ):
                    if v is not None:
                        stats[k].append(v.detach().float())

        # Metrics: means over this process's batch, then over processes.
        kl_seq = kl.sum(1)
        local = {
            "objective/rm_score": raw_scores.mean(),
            "objective/score": scores.mean(),
            "objective/kl": kl_seq.mean(),
            "objective/non_score_reward": (-beta * kl_seq).mean(),
            "objective/rlhf_reward": (scores - beta * kl_seq).mean(),
            **{
                f"objective/{name}": torch.tensor(fn(prompts, texts, finished.tolist()), dtype=torch.float).mean()
                for name, fn in self.monitors.items()
            },
            "answer/length": maskf.sum(1).mean(),
            "answer/eos_share": finished.float().mean(),
            **{
                f"{'loss' if 'loss' in k else 'policy' if k != 'vf_clipfrac' else 'value'}/{k}": torch.stack(v).mean()
                for k, v in stats.items()
                if v
            },
        }
        names = list(local)
        reduced = acc.reduce(torch.stack([torch.as_tensor(local[k], device=dev).float() for k in names]), "mean")
        metrics = {k: round(float(v), 6) for k, v in zip(names, reduced.tolist(), strict=True)}
        metrics.update({k: round(v, 6) for k, v in parts.items()})
        self.episode += self.batch_size
        self.kl_ctl.update(metrics["objective/kl"], self.batch_size)
        elapsed = time.time() - t0
        metrics.update(
            {
                "beta": beta,
                "lr": self.scheduler.get_last_lr()[0],
                "episodes_per_s": round(self.batch_size / elapsed, 3),
                "rollout_s": round(rollout_time, 3),
                "step_s": round(elapsed, 3),
            }
        )
        return metrics

    def _ptx_batch(self) -> torch.Tensor:
        n, k = len(self.ptx_blocks), self.args.per_device_train_batch_size
        start = (self._ptx_cursor * k + self.accelerator.process_index * 7919) % n
        self._ptx_cursor += 1
        idx = [(start + j) % n for j in range(k)]
        return self.ptx_blocks[idx].to(self.accelerator.device)

    # -------------------------------------------------------------------------------------------- loop

    def train(self, resume_from_checkpoint: str | Path | None = None) -> dict:
        acc = self.accelerator
        if resume_from_checkpoint:
            self.load_checkpoint(resume_from_checkpoint)
        self._ptx_cursor = self.step * self.args.num_ppo_epochs * self.local_batch_size
        self.signals.install()
        start, first_step, last = time.time(), self.step, {}
        try:
            while self.step < self.num_steps:
                metrics = self.ppo_step()
                self.step += 1
                last = {"step": self.step, "episode": self.episode, **metrics}
                self._log(last, start, first_step)
                if self.signals.requested:
                    acc.set_trigger()
                if acc.check_trigger():
                    path = self.save_checkpoint()
                    raise Interrupted(f"Checkpoint saved at {path}; continue with --resume.")
                if self.args.save_steps and self.step % int(self.args.save_steps) == 0 and self.step < self.num_steps:
                    self.save_checkpoint()
        finally:
            self.signals.restore()
        if self.args.report_to and [r for r in self.args.report_to if r != "none"]:
            acc.end_training()
        return last

    def _log(self, row: dict, start: float, first_step: int) -> None:
        self.accelerator.log(row, step=self.step)
        if not self.accelerator.is_main_process:
            return
        if self.metrics_path:
            with open(self.metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({**row, "time": round(time.time() - start, 3)}) + "\n")
        if self.args.logging_steps and (
            self.step % max(int(self.args.logging_steps), 1) == 0 or self.step == self.num_steps
        ):
            done = self.step - first_step
            eta = (time.time() - start) / done * (self.num_steps - self.step)
            gold = f" | gold {row['objective/gold']:+.3f}" if "objective/gold" in row else ""
            print(
                f"ppo {self.step}/{self.num_steps} | score {row['objective/rm_score']:+.3f}{gold} | kl {row['objective/kl']:.3f} "
                f"| beta {row['beta']:.3g} | pg {row.get('loss/pg_loss', 0):+.3f} | vf {row.get('loss/vf_loss', 0):.3f} "
                f"| len {row['answer/length']:.1f} | eos {row['answer/eos_share']:.2f} | {row['episodes_per_s']:.1f} ep/s "
                f"| eta {eta:.0f}s",
                flush=True,
            )

    # -------------------------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> Path:
        """`checkpoints/checkpoint-<step>/`: written under a temporary name by every process, renamed when complete."""
        acc = self.accelerator
        root = Path(self.args.output_dir)
        final, tmp = root / f"checkpoint-{self.step}", root / f".checkpoint-{self.step}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        with _without_shared_tensor_note():
            acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {
                "step": self.step,
                "episode": self.episode,
                "num_steps": self.num_steps,
                "batch_size": self.batch_size,
                "kl_coef": self.kl_ctl.value,
                "kl_controller": self.kl_ctl.state_dict(),
                "data_position": self.step,
            }
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune(root)
        acc.wait_for_everyone()
        return final

    def _prune(self, root: Path) -> None:
        limit = self.args.save_total_limit
        if not limit:
            return
        done = sorted(
            (p for p in root.glob("checkpoint-*") if (p / "trainer_state.json").exists()),
            key=lambda p: int(p.name.split("-")[-1]),
        )
        for old in done[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, path: str | Path) -> None:
        state = json.loads((Path(path) / "trainer_state.json").read_text())
        if state["batch_size"] != self.batch_size:
            raise UserError(
                f"Checkpoint {path} was made with {state['batch_size']} episodes per PPO step, this run uses "
                f"{self.batch_size}: resume with the same batch size and number of processes, or --overwrite."
            )
        self.accelerator.load_state(str(path))
        self.step, self.episode = state["step"], state["episode"]
        self.kl_ctl.load_state_dict(state["kl_controller"])
        if self.accelerator.is_main_process:
            print(f"Resuming from {path} (step {self.step}, {self.episode} episodes).", flush=True)

    def save_model(self, output_dir: str | Path, *, source: str | None = None, setting: str = "auto") -> str:
        """The policy as a plain causal-LM folder (a LoRA adapter merged in), in the dtype `modeling.save_model`
        picks (`source`: the checkpoint PPO started from). Call on every process; the main one writes. Returns the
        sentence saying which dtype and why."""
        acc = self.accelerator
        if self.is_peft:
            if acc.is_main_process:
                return save_model(merged(copy.deepcopy(self.policy)), Path(output_dir), source=source, setting=setting)
            return ""
        state = acc.get_state_dict(self.model)
        if acc.is_main_process:
            policy_state = {k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")}
            return save_model(self.policy, Path(output_dir), source=source, setting=setting, state_dict=policy_state)
        return ""


def _fill_deepspeed_auto(accelerator, args) -> None:
    """DeepSpeed reads `auto` batch sizes from a DataLoader passed to `prepare`; PPO passes none (it rolls out its own
    batches), so a config with `train_micro_batch_size_per_gpu: auto` (the shipped ones) would refuse to start: fill
    them from the PPO config, as TRL's trainers do for their reference models."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    config = plugin.deepspeed_config
    values = {
        "train_micro_batch_size_per_gpu": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "train_batch_size": args.per_device_train_batch_size
        * args.gradient_accumulation_steps
        * accelerator.num_processes,
        "gradient_clipping": args.max_grad_norm or 1.0,
    }
    for key, value in values.items():
        if config.get(key, "auto") == "auto":
            config[key] = value


@contextlib.contextmanager
def _without_shared_tensor_note():
    """accelerate notes on every checkpoint that the tied embedding / output head was saved once ("Removed shared
    tensor"); they are tied again on load, so the note is noise in every PPO log."""
    import logging

    logger = logging.getLogger("accelerate.utils.other")

    def keep(record) -> bool:
        return "Removed shared tensor" not in record.getMessage()

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
