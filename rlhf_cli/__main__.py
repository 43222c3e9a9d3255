"""`python -m rlhf_cli` (what `accelerate launch -m rlhf_cli` runs)."""

from rlhf_cli.cli import main

main()
