"""Train a PVTC projector by distillation: the compressed model learns to answer like the uncompressed one.

The backbone stays frozen; only the projector vtc added trains. The target is the original model's next-token
distribution on the text that follows the image, so no labels are needed: any images and prompts will do. Runs in
about a minute on a CPU with a tiny random model; pass a local checkpoint folder to train a real one.

    python examples/distill_pvtc.py                       # tiny LLaVA built in memory
    python examples/distill_pvtc.py --family qwen2_vl --ratio 4
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import vtc
from vtc.adapters._tiny import build_tiny_model, build_tiny_processor, tiny_batch

TAIL = 6  # text positions after the image whose next-token distributions are matched


def batches(family, processor, count, seed):
    """`count` batches of two prompts with random images, as the (possibly patched) processor writes them."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(count):
        sizes = [tuple(int(v) for v in torch.randint(24, 72, (2,), generator=gen)) for _ in range(2)]
        yield tiny_batch(family, processor, batch=2, image_sizes=sizes, prompt="w3 {image} what is in the picture ?")


def tail_log_probs(model, inputs):
    return F.log_softmax(model(**inputs).logits[:, -TAIL:].float(), dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="llava")
    parser.add_argument("--ratio", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, processor = build_tiny_model(args.family), build_tiny_processor(args.family)

    # The teacher's targets come from the uncompressed model, on inputs from the unpatched processor.
    with torch.no_grad():
        train_targets = [tail_log_probs(model, b) for b in batches(args.family, processor, args.steps, seed=1)]
        test_targets = [tail_log_probs(model, b) for b in batches(args.family, processor, 8, seed=2)]

    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=args.ratio)), processor=processor)
    vtc.mark_only_vtc_trainable(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)

    def held_out_kl() -> float:
        model.eval()
        with torch.no_grad():
            kls = [F.kl_div(tail_log_probs(model, b), t, log_target=True, reduction="batchmean").item()
                   for b, t in zip(batches(args.family, processor, 8, seed=2), test_targets)]
        model.train()
        return sum(kls) / len(kls)

    before = held_out_kl()
    model.train()
    for inputs, target in zip(batches(args.family, processor, args.steps, seed=1), train_targets):
        loss = F.kl_div(tail_log_probs(model, inputs), target, log_target=True, reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_kl()
    print(f"{args.family}, PVTC ratio {args.ratio}: held-out KL to the uncompressed model "
          f"{before:.4f} (warm start) -> {after:.4f} after {args.steps} steps")


if __name__ == "__main__":
    main()
