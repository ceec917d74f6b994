"""Why the left-padded decoder's gradients became NaN in bf16 on a GPU (issue 10), one forward and backward per variant.

A Qwen2-0.5B-shaped decoder (random weights, float32, fewer layers), last-token pooling, an in-batch InfoNCE loss on
8 query/passage pairs of different lengths, under `torch.autocast(bfloat16)` as accelerate runs it. Each variant pads
the same texts on the left or on the right, with SDPA or eager attention, and reports whether the loss and the
gradient norm are finite. Run: `python bench/padding_nan.py [--layers 4] [--out results.json]` (CUDA when present).
"""

import argparse
import json

import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2Model


def pool_last(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    "The hidden state of each row's last real token, on either padding side (as sentence-transformers' lasttoken)."
    values, idx = mask.flip(1).max(1)
    last = hidden.shape[1] - 1 - torch.where(values == 0, 0, idx)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def batch(lengths: list[int], side: str, vocab: int, gen: torch.Generator) -> dict:
    "Random token ids of the given lengths, padded on `side`."
    width = max(lengths)
    ids, mask = torch.zeros(len(lengths), width, dtype=torch.long), torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        span = slice(width - n, width) if side == "left" else slice(0, n)
        ids[i, span] = torch.randint(1, vocab, (n,), generator=gen)
        mask[i, span] = 1
    return {"input_ids": ids, "attention_mask": mask}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for attn in ("sdpa", "eager"):
        torch.manual_seed(0)
        cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=a.layers,
                          num_attention_heads=14, num_key_value_heads=2, attn_implementation=attn)
        model = Qwen2Model(cfg).to(device)
        for precision in ("bf16", "no"):
            for side in ("left", "right"):
                gen = torch.Generator().manual_seed(1)
                q = batch([5, 9, 3, 12, 7, 4, 10, 6], side, cfg.vocab_size, gen)
                d = batch([30, 18, 41, 25, 12, 36, 22, 48], side, cfg.vocab_size, gen)
                model.zero_grad()
                with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    emb = [F.normalize(pool_last(model(**{k: v.to(device) for k, v in b.items()}).last_hidden_state,
                                                 b["attention_mask"].to(device)).float(), dim=-1) for b in (q, d)]
                    loss = F.cross_entropy(emb[0] @ emb[1].T / 0.05, torch.arange(8, device=device))
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item()
                row = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "attention": attn,
                       "precision": precision, "padding": side, "loss": round(loss.item(), 4), "grad_norm": round(norm, 4),
                       "finite": bool(torch.isfinite(loss).item() and torch.isfinite(torch.tensor(norm)).item())}
                print(json.dumps(row), flush=True)
                rows.append(row)
    if a.out:
        open(a.out, "w").write(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
