"""The baseline of `python -m bench.ppo`: a plain script on TRL 1.12's `trl.experimental.ppo.PPOTrainer` (TRL's last PPO).

Runs inside bench/.venv-trl112 (made by bench.ppo: torch, trl==1.12.0, the main venv's transformers); it imports nothing
from rlhf_cli. Same models as `rlhf ppo` (policy and reference from the SFT model; reward and value model from the
reward model), same prompts, same settings; writes the trained policy to `<output-dir>/policy` and a JSON of results
(train wall time, episodes/s, the logged metrics) to --out. The gold reward of the saved policy is measured afterwards
by bench.ppo in the main venv, with the same code as for our PPO.

    bench/.venv-trl112/bin/python bench/ppo_trl112.py --policy RUN/sft/final --reward RUN/reward/final \
        --prompts RUN/data/toy/prompts_train.jsonl --output-dir bench/out/ppo/trl-0 --out bench/out/ppo/trl-0.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description="TRL 1.12 PPOTrainer on the rlhf tiny models")
    p.add_argument("--policy", required=True, help="SFT model folder (policy and reference)")
    p.add_argument("--reward", required=True, help="reward model folder (reward and value model)")
    p.add_argument("--prompts", required=True, help="jsonl of {'prompt': str}")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="PPO batches (total_episodes = steps * batch size)")
    p.add_argument("--response-length", type=int, default=48)
    p.add_argument("--num-ppo-epochs", type=int, default=4)
    p.add_argument("--num-mini-batches", type=int, default=1)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--missing-eos-penalty", type=float, default=1.0)
    p.add_argument("--forward-batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(a.policy, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(a.policy)
    ref = AutoModelForCausalLM.from_pretrained(a.policy)
    reward = normalised_reward_model(
        AutoModelForSequenceClassification.from_pretrained(a.reward, num_labels=1), a.reward
    )
    value = AutoModelForSequenceClassification.from_pretrained(a.reward, num_labels=1)
    for m in (reward, value):
        m.config.pad_token_id = tok.pad_token_id

    prompts = [json.loads(line)["prompt"] for line in Path(a.prompts).read_text().splitlines() if line.strip()]

    def encode(texts):
        return [
            list(
                tok.apply_chat_template(
                    [{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True, return_dict=True
                )["input_ids"]
            )
            for t in texts
        ]

    train = datasets.Dataset.from_dict({"input_ids": encode(prompts)})
    evals = datasets.Dataset.from_dict({"input_ids": encode(prompts[:16])})

    out_dir = Path(a.output_dir)
    args = PPOConfig(
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=a.batch_size // a.num_mini_batches,
        gradient_accumulation_steps=1,
        num_mini_batches=a.num_mini_batches,
        total_episodes=a.steps * a.batch_size,
        num_ppo_epochs=a.num_ppo_epochs,
        response_length=a.response_length,
        temperature=a.temperature,
        missing_eos_penalty=a.missing_eos_penalty,
        stop_token="eos",
        kl_coef=a.kl_coef,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        local_rollout_forward_batch_size=a.forward_batch_size,
        num_sample_generations=0,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        seed=a.seed,
        dataloader_num_workers=0,
    )
    history: list[dict] = []

    class Keep(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            history.append(dict(logs or {}))

    trainer = PPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        value_model=value,
        train_dataset=train,
        eval_dataset=evals,
        callbacks=[Keep()],
    )
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    train_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    episodes = args.num_total_batches * args.batch_size
    trainer.save_model(str(out_dir / "policy"))
    tok.save_pretrained(str(out_dir / "policy"))
    result = {
        "side": "trl112",
        "train_s": round(train_s, 3),
        "episodes": episodes,
        "episodes_per_s": round(episodes / train_s, 3),
        "cpu_s": round(cpu_s, 3),
        "episodes_per_cpu_s": round(episodes / cpu_s, 3),
        "steps": args.num_total_batches,
        "policy_dir": str(out_dir / "policy"),
        "threads": torch.get_num_threads(),
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "first_log": history[0] if history else None,
        "last_log": history[-1] if history else None,
    }
    Path(a.out).write_text(json.dumps(result, indent=2, default=float))
    print(f"trl 1.12 PPO: {episodes} episodes in {train_s:.1f} s = {episodes / train_s:.2f} episodes/s", flush=True)


def normalised_reward_model(model, path: str):
    """The reward model with the score normalisation `rlhf ppo` applies ((score - mean) / std from reward_stats.json)
    folded into its score head, so TRL's PPO sees the same rewards. (TRL reads the score head directly.)"""
    import torch

    stats_path = Path(path) / "reward_stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    mean, std = float(stats.get("mean", 0.0)), float(stats.get("std", 1.0)) or 1.0
    old = model.score
    head = torch.nn.Linear(old.in_features, 1, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight / std)
        head.bias.fill_(-mean / std)
    model.score = head
    return model


if __name__ == "__main__":
    main()
