"""Interleaved A/B of CPU translation latency: how the generator ran before (NCHW, SDPA attention) against now.

    python benchmarks/inference_ab.py --size 256 --channels 16 --threads 2 --rounds 30

Builds the default architecture `travel fit --size S --channels C` would train (random weights: speed does
not depend on them) and times one forward pass of a batch-1 image per variant, round-robin, so that the
noise of a shared machine falls on every variant alike. Prints the median and the best per variant.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from travel.options import fit_config
from travel.inference import inference_layout, run_generator
from travel.nets.blocks import SelfAttention
from travel.nets.generator import build_generator


def sdpa_forward(self: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """SelfAttention.forward as it was: scaled_dot_product_attention on every device."""
    n, c, h, w = x.shape
    q, k, v = (m(x).flatten(2).transpose(1, 2) for m in (self.query, self.key, self.value))
    out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
    return x + self.gate * out.transpose(1, 2).reshape(n, c, h, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain = build_generator(fit_config(size=args.size, channels=args.channels).model.generator).eval()
    for p in plain.parameters():
        p.data.normal_(0, 0.05)  # non-zero, so the residual head and the attention gates do real work
    nhwc = inference_layout(copy.deepcopy(plain))
    image = torch.rand(1, 3, args.size, args.size) * 2 - 1
    explicit = SelfAttention.forward
    variants = {
        "before: NCHW, SDPA": (lambda: plain(image), sdpa_forward),
        "NCHW, explicit attention": (lambda: plain(image), explicit),
        "NHWC, SDPA": (lambda: run_generator(nhwc, image), sdpa_forward),
        "now: NHWC, explicit attention": (lambda: run_generator(nhwc, image), explicit),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    outputs = {}
    with torch.no_grad():
        for name, (call, forward) in variants.items():
            SelfAttention.forward = forward
            for _ in range(3):
                outputs[name] = call()
        for _ in range(args.rounds):
            for name, (call, forward) in variants.items():
                SelfAttention.forward = forward
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    SelfAttention.forward = explicit
    reference = outputs["before: NCHW, SDPA"]
    print(f"{args.size}px, {args.channels} channels, {args.threads} threads, batch 1, {args.rounds} interleaved rounds")
    for name, values in times.items():
        print(f"  {name:32s} median {1000 * statistics.median(values):7.1f} ms  best {1000 * min(values):7.1f} ms"
              f"  max |diff| {float((outputs[name] - reference).abs().max()):.1e}")


if __name__ == "__main__":
    main()
