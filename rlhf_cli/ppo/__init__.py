"""Our PPO trainer (TRL removed PPOTrainer in 1.13): config, rollout, advantages, losses, KL control, checkpoints."""
