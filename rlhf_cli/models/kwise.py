"""InstructGPT's K-wise reward-model loss (Ouyang et al. 2022, eq. 1): one batch element is one prompt, its distinct
answers scored once, the loss the mean of -log sigmoid(r_better - r_worse) over all its ranked pairs; as a RewardTrainer
subclass (TRL's RewardTrainer takes one pair per element)."""

from __future__ import annotations

from rlhf_cli.models.scoring import encode


def kwise_loss(rewards, chosen_index, rejected_index, pair_weight, margin=None):
    """Σ w·(-log σ(r_chosen - r_rejected - margin)): with w = 1/(pairs of the prompt · prompts), the mean over prompts
    of the mean over each prompt's comparisons. Returns (loss, per-pair reward differences)."""
    import torch.nn.functional as F

    diff = rewards[chosen_index] - rewards[rejected_index]
    logits = diff - margin if margin is not None else diff
    return (pair_weight * -F.logsigmoid(logits)).sum(), diff


def group_pairs(pairs, tokenizer, max_length: int):
    """Pairs in the normal form -> one row per prompt: its distinct answers tokenized once, and its comparisons."""
    import datasets

    groups: dict[int, dict] = {}
    for row in pairs:
        g = groups.setdefault(row["group"], {"prompt": row["prompt"], "answers": {}, "pairs": []})
        index = [g["answers"].setdefault(text, len(g["answers"])) for text in (row["chosen"], row["rejected"])]
        if index[0] != index[1]:
            g["pairs"].append((*index, row["margin"]))
    rows = [
        {
            "response_ids": [encode(tokenizer, g["prompt"], a, max_length) for a in g["answers"]],
            "pair_chosen": [p[0] for p in g["pairs"]],
            "pair_rejected": [p[1] for p in g["pairs"]],
            "pair_margin": [float(p[2]) for p in g["pairs"]],
        }
        for g in groups.values()
        if g["pairs"]
    ]
    return datasets.Dataset.from_list(rows)


class KWiseCollator:
    """Prompts (rows of `group_pairs`) -> one flat, right-padded batch of all their answers, and each comparison's
    (chosen, rejected) positions in it with weight 1/(the prompt's comparisons · prompts in the batch)."""

    def __init__(self, pad_token_id: int, use_margin: bool = False):
        self.pad_token_id, self.use_margin = pad_token_id, use_margin

    def __call__(self, examples: list[dict]) -> dict:
        import torch
        from trl.trainer.utils import pad

        seqs, chosen, rejected, weight, margin = [], [], [], [], []
        for ex in examples:
            base, n = len(seqs), len(ex["pair_chosen"])
            seqs += [torch.tensor(ids) for ids in ex["response_ids"]]
            chosen += [base + i for i in ex["pair_chosen"]]
            rejected += [base + i for i in ex["pair_rejected"]]
            weight += [1.0 / (n * len(examples))] * n
            margin += ex["pair_margin"]
        batch = {
            "input_ids": pad(seqs, padding_value=self.pad_token_id, padding_side="right"),
            "attention_mask": pad([torch.ones_like(s) for s in seqs], padding_value=0, padding_side="right"),
            "chosen_index": torch.tensor(chosen),
            "rejected_index": torch.tensor(rejected),
            "pair_weight": torch.tensor(weight),
        }
        if self.use_margin:
            batch["margin"] = torch.tensor(margin)
        return batch


# One forward's fixed cost on a CPU, in padded tokens' worth (measured on a 2-core EPYC, 128 wide: 16 ms against 0.07
# ms a token for forward and backward); a shorter chunk of the batch pays for itself when it saves more padding.
CHUNK_OVERHEAD_TOKENS = 256


def length_chunks(lengths: list[int], overhead: int = CHUNK_OVERHEAD_TOKENS) -> list[tuple[int, int]]:
    """Rows sorted longest first -> [(start, end), ...]: the split into consecutive chunks, each padded to its own
    longest row, that costs the fewest padded tokens plus `overhead` per chunk (dynamic programming over the cuts)."""
    n = len(lengths)
    best, cut = [0] + [None] * n, [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(end):
            cost = best[start] + overhead + (end - start) * lengths[start]
            if best[end] is None or cost < best[end]:
                best[end], cut[end] = cost, start
    chunks, end = [], n
    while end:
        chunks.append((cut[end], end))
        end = cut[end]
    return chunks[::-1]


def chunked_rewards(model, input_ids, attention_mask):
    """The scalar rewards of a right-padded batch, its rows run in chunks of like length (longest first), each cut to
    its own longest row: on a CPU a K-wise batch of answers 11-60 tokens long is ~40 % padding, and a forward's cost
    is its tokens. Causal attention and right padding make each row's reward the same as in one forward."""
    import torch

    lengths = attention_mask.sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_lengths = lengths[order].tolist()
    parts = []
    for start, end in length_chunks(sorted_lengths):
        rows, width = order[start:end], sorted_lengths[start]
        out = model(input_ids=input_ids[rows, :width], attention_mask=attention_mask[rows, :width], use_cache=False)
        parts.append(out.logits.squeeze(-1))
    return torch.cat(parts)[torch.argsort(order)]


def kwise_trainer_class():
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput
    from trl import RewardTrainer

    class KWiseRewardTrainer(RewardTrainer):
        """RewardTrainer with one prompt's K answers per batch element and the mean over its K(K-1)/2 comparisons."""

        def __init__(self, *args, use_margin: bool = False, **kwargs):
            kwargs["data_collator"] = KWiseCollator(kwargs["processing_class"].pad_token_id, use_margin)
            super().__init__(*args, **kwargs)

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # already grouped and tokenized by group_pairs

        def _set_signature_columns_if_needed(self):
            self._signature_columns = ["response_ids", "pair_chosen", "pair_rejected", "pair_margin"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            chosen, rejected = inputs.pop("chosen_index"), inputs.pop("rejected_index")
            weight, margin = inputs.pop("pair_weight"), inputs.pop("margin", None)
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            if ids.device.type == "cpu" and self.accelerator.num_processes == 1:
                # several forwards before one backward: fine in one process, not under DDP (a parameter's gradient
                # would be marked ready twice); on a GPU padding costs little next to a forward's launch.
                rewards = chunked_rewards(model, ids, mask)
            else:
                rewards = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.squeeze(-1)
            outputs = SequenceClassifierOutput(logits=rewards.unsqueeze(-1))
            loss, diff = kwise_loss(rewards, chosen, rejected, weight, margin)
            if self.args.center_rewards_coefficient is not None:
                loss = (
                    loss
                    + self.args.center_rewards_coefficient * (weight * (rewards[chosen] + rewards[rejected]) ** 2).sum()
                )
            with torch.no_grad():
                gather = self.accelerator.gather_for_metrics
                self._metrics[mode]["accuracy"].append(gather((weight * (diff > 0).float()).sum()).mean().item())
                self._metrics[mode]["margin"].append(gather((weight * diff).sum()).mean().item())
                self._metrics[mode]["mean_reward"].append(gather(rewards.mean()).mean().item())
            return (loss, outputs) if return_outputs else loss

    return KWiseRewardTrainer
