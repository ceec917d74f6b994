"""Why the left-padded decoder's gradients became NaN in bf16 on a GPU (issue 10), one forward and backward per variant.

A Qwen2-0.5B-shaped decoder (random weights, float32, fewer layers), last-token pooling, an in-batch InfoNCE loss on
8 query/passage pairs of different lengths, under `torch.autocast(bfloat16)` as accelerate runs it. Each variant pads
the same texts on the left or on the right, with SDPA or eager attention, and reports whether the loss and the
gradient norm are finite. Run: `python tools/checks/padding_nan.py [--layers 4] [--out results.json]` (CUDA when present).

`--train`: instead, embed_nb's own training of gpu_check's Qwen2-0.5B-shaped decoder (LoRA, gradient checkpointing,
bf16, 12 steps, one process) twice: with batches padded on the left (`TokenCache.batch` wrapped to move the padding
to the left, as the tokenizer's `padding_side` did before) and on the right (what embed_nb does).
"""

import argparse
import json

import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2Model

from gpu_check import LORA, QWEN2_05B, RUN, decoder_model  # this folder is on sys.path when the script runs


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


def left_padded(batch_fn):
    "Wrap `TokenCache.batch` so that its right-padded rows are moved to the left."

    def wrapped(self, *args, **kw):
        out = batch_fn(self, *args, **kw)
        n = out["attention_mask"].sum(1)
        for k, v in out.items():
            out[k] = torch.stack([torch.roll(row, int(v.shape[1] - c)) for row, c in zip(v, n)])
        return out

    return wrapped


def train_both(out: str | None):
    "embed_nb's training of the 0.5B-shaped decoder in bf16, padded on the left and on the right."
    import tempfile
    from pathlib import Path

    from embed_nb.core import EmbedNbError
    from embed_nb.data import TokenCache
    from embed_nb.train import train

    tmp = Path(tempfile.mkdtemp())
    dec, right, rows = decoder_model(tmp / "dec", small=not torch.cuda.is_available()), TokenCache.batch, []
    for side in ("left", "right"):
        TokenCache.batch = left_padded(right) if side == "left" else right
        cfg = dict(RUN, **LORA, model_name_or_path=dec, output_dir=str(tmp / side), mixed_precision="bf16")
        try:
            train(cfg)
            row = {"padding": side, "trained": True}
        except EmbedNbError as e:
            row = {"padding": side, "trained": False, "error": str(e)[:200]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    TokenCache.batch = right
    if out:
        open(out, "w").write(json.dumps(rows, indent=1) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--out", default=None)
    p.add_argument("--train", action="store_true", help="embed_nb's training of the decoder, left vs right padding")
    a = p.parse_args()
    if a.train:
        return train_both(a.out)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for attn in ("sdpa", "eager"):
        torch.manual_seed(0)
        cfg = Qwen2Config(**{**QWEN2_05B, "num_hidden_layers": a.layers}, attn_implementation=attn)
        model = Qwen2Model(cfg).to(device)
        for precision in ("bf16", "no"):
            for side in ("left", "right"):
                gen = torch.Generator().manual_seed(1)
                q = batch([5, 9, 3, 12, 7, 4, 10, 6], side, cfg.vocab_size, gen)
                d = batch([30, 18, 41, 25, 12, 36, 22, 48], side, cfg.vocab_size, gen)
                model.zero_grad()
                with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    emb = [
                        F.normalize(
                            pool_last(
                                model(**{k: v.to(device) for k, v in b.items()}).last_hidden_state,
                                b["attention_mask"].to(device),
                            ).float(),
                            dim=-1,
                        )
                        for b in (q, d)
                    ]
                    loss = F.cross_entropy(emb[0] @ emb[1].T / 0.05, torch.arange(8, device=device))
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item()
                row = {
                    "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    "attention": attn,
                    "precision": precision,
                    "padding": side,
                    "loss": round(loss.item(), 4),
                    "grad_norm": round(norm, 4),
                    "finite": bool(torch.isfinite(loss).item() and torch.isfinite(torch.tensor(norm)).item()),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    if a.out:
        open(a.out, "w").write(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
