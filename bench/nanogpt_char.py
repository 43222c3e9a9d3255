"""The reference a user would pick to pre-train on their own text on a CPU: nanoGPT's character-level recipe
(`train.py config/train_shakespeare_char.py --device=cpu --compile=False --block_size=64 --batch_size=12 --n_layer=4
--n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`), written here from its description:
a GPT of pre-LayerNorm blocks with causal self-attention and a GELU MLP, characters as tokens, AdamW (betas 0.9/0.99,
weight decay 0.1 on matrices), 100 warm-up iterations then cosine decay from 1e-3 to 1e-4, gradient clipping at 1,
no dropout. Its validation loss (the mean over 200 random batches of the held-out tail, as nanoGPT estimates it) in
bits per character is the figure to beat.

    .venv/bin/python -m bench.nanogpt_char FILE [--iters 2000]
    .venv/bin/python -m bench.nanogpt_char FILE --seconds 60      # as many iterations as 60 s allow (below)

`--seconds` gives the recipe a time budget instead of an iteration count: at the end of the 100 warm-up iterations
(whose learning rate does not depend on the count) the speed of iterations 20-100 says how many more the rest of the
budget allows, the cosine decay spans them, and training stops at the budget whatever the estimate said. (An estimate
from iterations 10-30 once ended a 60 s run at 42 s: 20 iterations are too few on a shared CPU.)
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj, self.heads = nn.Linear(d, 3 * d), nn.Linear(d, d), heads
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    def __init__(self, vocab: int, block: int, layers: int = 4, heads: int = 4, d: int = 128):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied, as nanoGPT
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx, targets):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return F.cross_entropy(self.head(self.ln(x)).flatten(0, 1), targets.flatten())


def train(
    text: str, iters: int = 2000, block: int = 64, batch: int = 12, seed: int = 1337, seconds: float | None = None
) -> dict:
    """nanoGPT's character recipe on the first 90 % of `text`; its validation loss on the last 10 %. With `seconds`,
    the iterations are what that many seconds allow on this machine (estimated early, the schedule spanning them)."""
    torch.manual_seed(seed)
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text])
    cut = int(0.9 * len(ids))
    train_ids, val_ids = ids[:cut], ids[cut:]
    model = CharGPT(len(chars), block)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))  # fmt: skip

    def lr_at(i):
        if i < 100:
            return 1e-3 * (i + 1) / 100
        ratio = min(1.0, (i - 100) / max(1, iters - 100))
        return 1e-4 + 0.5 * (1 + math.cos(math.pi * ratio)) * (1e-3 - 1e-4)

    def batch_of(data):
        start = torch.randint(len(data) - block - 1, (batch,))
        x = torch.stack([data[s : s + block] for s in start])
        return x, torch.stack([data[s + 1 : s + block + 1] for s in start])

    t0 = time.perf_counter()
    i = 0
    while i < iters:
        if seconds is not None:
            if i == 20:
                t20 = time.perf_counter()
            elif i == 100:  # the speed of iterations 20-100 sets the schedule's length, which warm-up does not use
                now = time.perf_counter()
                iters = 100 + max(0, int((seconds - (now - t0)) / ((now - t20) / 80)))
            if time.perf_counter() - t0 >= seconds:
                break
        for group in opt.param_groups:
            group["lr"] = lr_at(i)
        loss = model(*batch_of(train_ids))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        i += 1
    elapsed = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        val = sum(model(*batch_of(val_ids)).item() for _ in range(200)) / 200
    return {"val_bits_per_char": val / math.log(2), "train_seconds": round(elapsed, 1), "iters": i,
            "parameters": sum(p.numel() for p in model.parameters()), "chars": len(chars)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.nanogpt_char", description=__doc__.split("\n\n")[0])
    p.add_argument("file")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=None, help="A time budget instead of --iters.")
    a = p.parse_args(argv)
    out = train(open(a.file, encoding="utf-8").read(), iters=a.iters, seconds=a.seconds)
    print(out)
    return out


if __name__ == "__main__":
    main()
