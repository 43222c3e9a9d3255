"""rlhf: the whole ChatGPT training recipe (pretrain, SFT, reward model, PPO) from one YAML recipe."""

__version__ = "0.1.0"
