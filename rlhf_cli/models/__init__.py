"""Models and what they do: loading and building them (`modeling`), the hub offline, the one generation path, the one
reward-scoring path, the K-wise loss, trainer configs, answer metrics, `rlhf chat` and `rlhf export`."""
