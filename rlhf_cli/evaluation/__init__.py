"""Judging recipes, models and runs: `rlhf check`, `rlhf eval`, the report, `rlhf reward inspect`, a language
model's held-out metrics, intervals (`stats`), and the comparisons that train many points (`rlhf compare`, `rlhf sweep`)."""
