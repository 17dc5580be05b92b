"""Attention at scale (chapter 10): memory of full vs tiled attention, and decoding with a KV cache.

Run from the repository root with OpenBLAS's tuning variables unset (NumPy reads them when it
loads)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_scale.py

Shape: the issue's, one sequence, d_model 384, 6 heads (head_dim 64), float32. Four parts, every
ratio taken in this one process:

1. peak memory (``tracemalloc``, which sees every NumPy array) of the full forward
   ``mha.scaled_dot_product_attention`` and of ``mha.tiled.tiled_attention_forward`` as L grows,
   beside the size of the (H, L, L) score matrix; goal at 8192 tokens: tiled <= 1/10 of full;
2. the tiled forward alone at ``--long`` tokens (default 32768, causal), where the full score
   matrix (24 GiB) would not fit in a 24 GiB machine: time and peak memory;
3. time at 2048 tokens: tiled / full NumPy (goal <= 1.5), and both against torch's
   ``F.scaled_dot_product_attention`` on CPU;
4. generating ``--tokens`` tokens (default 1024) after a one-token prompt with
   ``mha.kv_cache.mha_decode_step`` and by recomputing the full causal forward for every new
   token; goal: the cache at least 10x faster. Both give the same outputs (checked first).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc

import numpy as np
import torch
import torch.nn.functional as F

import mha
from mha.kv_cache import KVCache, kv_cache_bytes, mha_decode_step
from mha.tiled import causal_blocks, tiled_attention_forward

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_mha import (
    OPENBLAS_VARS,
    cpu_clock,
    cpu_model,
    numpy_blas,
    others_share,
    race,
)  # noqa: E402

MiB = 2**20


def peak_bytes(fn) -> int:
    """Peak bytes NumPy (and Python) allocated while ``fn()`` ran, above what existed before."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


def qkv(L: int, heads: int, head_dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return tuple(
        rng.standard_normal((1, heads, L, head_dim), dtype=np.float32) for _ in range(3)
    )


def memory(lengths, heads, head_dim, block_q, block_k) -> None:
    print(
        f"\n1. Peak memory, causal attention of (1, {heads}, L, {head_dim}) float32 "
        f"(tracemalloc; blocks {block_q} x {block_k})"
    )
    print(
        f"{'L':>7} {'scores MiB':>11} {'full MiB':>9} {'tiled MiB':>10} {'tiled/full':>11}"
    )
    for L in lengths:
        args = qkv(L, heads, head_dim)
        full = peak_bytes(
            lambda a=args: mha.scaled_dot_product_attention(*a, is_causal=True)
        )
        tiled = peak_bytes(
            lambda a=args: tiled_attention_forward(
                *a, is_causal=True, block_q=block_q, block_k=block_k
            )
        )
        scores = heads * L * L * 4
        goal = (
            "   (goal <= 0.10 at 8192: {})".format(
                "met" if tiled <= full / 10 else "NOT MET"
            )
            if L == 8192
            else ""
        )
        print(
            f"{L:7d} {scores / MiB:11.1f} {full / MiB:9.1f} {tiled / MiB:10.1f} {tiled / full:11.3f}{goal}"
        )


def long_run(L, heads, head_dim, block_q, block_k) -> None:
    q, k, v = qkv(L, heads, head_dim)
    scores = heads * L * L * 4
    print(
        f"\n2. Tiled causal forward alone at L = {L} (the score matrix would be {scores / 2**30:.1f} GiB)"
    )
    t0 = time.perf_counter()
    peak = peak_bytes(
        lambda: tiled_attention_forward(
            q, k, v, is_causal=True, block_q=block_q, block_k=block_k
        )
    )
    seconds = time.perf_counter() - t0
    computed, skipped = causal_blocks(L, L, block_q, block_k)
    print(
        f"   {seconds:.1f} s (under tracemalloc), peak {peak / MiB:.1f} MiB "
        f"({peak / scores:.2e} of the score matrix); {computed} tiles computed, {skipped} skipped"
    )


def speed(L, heads, head_dim, block_q, block_k, repeats) -> None:
    q, k, v = qkv(L, heads, head_dim)
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    full = mha.scaled_dot_product_attention(q, k, v, is_causal=True)
    tiled, _ = tiled_attention_forward(
        q, k, v, is_causal=True, block_q=block_q, block_k=block_k
    )
    with torch.no_grad():
        ref = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True).numpy()
    worst = max(float(np.abs(full - ref).max()), float(np.abs(tiled - ref).max()))
    if worst > 1e-5:
        sys.exit(
            f"refusing to time: the outputs differ from torch by {worst:.1e} > 1e-5"
        )
    fns = {
        "full (mha)": lambda: mha.scaled_dot_product_attention(q, k, v, is_causal=True),
        "tiled (mha)": lambda: tiled_attention_forward(
            q, k, v, is_causal=True, block_q=block_q, block_k=block_k
        ),
        "torch SDPA": lambda: F.scaled_dot_product_attention(
            tq, tk, tv, is_causal=True
        ),
    }
    with torch.no_grad():
        times = race(fns, repeats=repeats, warmup=1)
    print(
        f"\n3. Causal forward at L = {L}, median (min) of {repeats}; outputs within {worst:.1e} of torch"
    )
    for name, (med, low) in times.items():
        print(f"   {name:12s} {med * 1e3:8.1f} ms ({low * 1e3:.1f})")
    ratio = times["tiled (mha)"][0] / times["full (mha)"][0]
    print(
        f"   tiled / full NumPy: {ratio:.2f} (goal <= 1.5: {'met' if ratio <= 1.5 else 'NOT MET'}); "
        f"tiled / torch: {times['tiled (mha)'][0] / times['torch SDPA'][0]:.2f}; "
        f"full / torch: {times['full (mha)'][0] / times['torch SDPA'][0]:.2f}"
    )


def decoding(tokens, d_model, heads) -> None:
    m = mha.MultiHeadAttention(d_model, heads, batch_first=True, seed=0)
    x = np.random.default_rng(1).standard_normal((1, tokens, d_model), dtype=np.float32)
    hd = d_model // heads
    checkpoints = sorted({n for n in (128, 256, 512, tokens) if n <= tokens})

    def with_cache():
        cache = KVCache(1, heads, hd, capacity=tokens)
        outs, step_times = [], {}
        for t in range(tokens):
            t0 = time.perf_counter()
            outs.append(mha_decode_step(m, x[:, t : t + 1], cache))
            step_times[t + 1] = time.perf_counter() - t0
        return np.concatenate(outs, axis=1), step_times

    def recompute():
        outs, step_times = [], {}
        for t in range(tokens):
            t0 = time.perf_counter()
            # every token's attention, again
            outs.append(m(x[:, : t + 1], is_causal=True)[:, -1:])
            step_times[t + 1] = time.perf_counter() - t0
        return np.concatenate(outs, axis=1), step_times

    t0 = time.perf_counter()
    cached, cached_steps = with_cache()
    cached_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again, again_steps = recompute()
    again_s = time.perf_counter() - t0
    worst = float(np.abs(cached - again).max())
    if worst > 1e-5:
        sys.exit(
            f"the cached decoding differs from the recomputed one by {worst:.1e} > 1e-5"
        )
    print(
        f"\n4. Generating {tokens} tokens, d_model {d_model}, {heads} heads, float32 "
        f"(outputs agree within {worst:.1e})"
    )
    print(
        f"   with the KV cache: {cached_s:.2f} s; recomputing full attention per token: {again_s:.2f} s"
    )
    ratio = again_s / cached_s
    print(
        f"   cache speed-up: {ratio:.1f}x (goal >= 10x: {'met' if ratio >= 10 else 'NOT MET'})"
    )
    print("   time per token at length n, with / without cache:")
    for n in checkpoints:
        print(
            f"     n = {n:5d}: {cached_steps[n] * 1e3:6.2f} ms / {again_steps[n] * 1e3:7.1f} ms"
        )
    sizes = {
        name: kv_cache_bytes(1, 1, hkv, hd, tokens)
        for name, hkv in (("MHA", heads), ("GQA", max(heads // 3, 1)), ("MQA", 1))
    }
    print(
        "   KV cache for one layer at this length: "
        + ", ".join(f"{name} {b / MiB:.2f} MiB" for name, b in sizes.items())
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192]
    )
    p.add_argument(
        "--long",
        type=int,
        default=32768,
        help="tokens of the long tiled run (0: skip it)",
    )
    p.add_argument("--tokens", type=int, default=1024, help="tokens to generate")
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--block-q", type=int, default=128)
    p.add_argument("--block-k", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's choice)",
    )
    args = p.parse_args()
    for var in OPENBLAS_VARS:
        if var in os.environ:
            print(
                f"warning: {var} is set; unset it before Python starts (it slows NumPy's matmuls)",
                file=sys.stderr,
            )
    if args.threads:
        torch.set_num_threads(args.threads)
    head_dim = args.d_model // args.heads
    print(
        f"Python {platform.python_version()}, NumPy {np.__version__}, torch {torch.__version__}"
    )
    print(
        f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); torch threads {torch.get_num_threads()}"
    )
    print(f"NumPy BLAS: {numpy_blas(torch.get_num_threads())}")
    start = cpu_clock()
    t0 = time.perf_counter()
    memory(args.lengths, args.heads, head_dim, args.block_q, args.block_k)
    if args.long:
        long_run(args.long, args.heads, head_dim, args.block_q, args.block_k)
    speed(2048, args.heads, head_dim, args.block_q, args.block_k, args.repeats)
    decoding(args.tokens, args.d_model, args.heads)
    print(f"\n{others_share(start)}; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
