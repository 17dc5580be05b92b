"""Time ``mha.MultiHeadAttention`` (NumPy) against ``torch.nn.MultiheadAttention`` in one process.

Run from the repository root with OpenBLAS's tuning variables unset (NumPy reads them when it
loads, and they slow its matmuls; the script warns on stderr if they are set)::

    make bench        # = env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_mha.py
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_mha.py --profile

Default shape: the seed's, batch 16 x sequence 256 x d_model 384, 6 heads, float32. Both sides
share weights (``mha.to_pytorch``) and input; outputs and the input gradient are compared before
anything is timed. The contestants take turns every repeat, so load drift hits all of them;
each turn begins with untimed runs, so no one is timed while the other's thread pool still spins.

Reading the numbers: ``ms`` is the median over ``--repeats`` (minimum in brackets); ``ratio`` is
numpy / torch (below 1.0 NumPy is faster). torch's forward has two routes: the fused fast path
(``torch._native_multi_head_attention``: eval mode, ``inference_mode``, ``need_weights=False``,
self-attention) and the Python slow path; the headline forward ratio is against the faster one.
GFLOP/s counts a forward as 2BTC*3C (in-projection) + 2BTTC (scores) + 2BTTC (weights @ V) +
2BTC*C (out-projection), forward+backward as 3x that; ``%pk`` divides by the best float32 matmul
rate NumPy reached in this process (2048^3): the share of the machine's own BLAS speed. If the
line "CPU use by other processes" is flagged, others competed for the cores: rerun when idle.
``--profile`` times the NumPy forward's and backward's building blocks alone at the same shapes
(np.matmul, mha.functional) to show where the time goes.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
from threadpoolctl import threadpool_info

import mha
from mha.functional import _softmax_inplace, softmax_backward

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
SETTLE = 2  # untimed runs each time the timed code changes hands (see race)


def race(fns: dict, repeats: int, warmup: int, settle: int = SETTLE) -> dict:
    """Time every callable ``repeats`` times, taking turns in a rotating order; (median, min) seconds.

    Each turn starts with ``settle`` untimed runs: after a call, OpenBLAS's worker threads and
    torch's OpenMP threads keep spinning for a while (about 0.1 s for OpenBLAS), and on a small
    machine the other library's first run or two after a switch pay for it (up to 2x slower).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            for _ in range(settle if len(names) > 1 else 0):
                fns[name]()
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def numpy_blas(threads: int) -> str:
    """What is known of NumPy's BLAS: library, thread count (read, not set), kernel."""
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    pool = next(
        (
            p
            for p in threadpool_info()
            if p["user_api"] == "blas" and "numpy" in p["filepath"]
        ),
        {},
    )
    count, core = pool.get("num_threads"), pool.get("architecture")
    env = "".join(
        f", {v}={os.environ[v]}"
        for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
        if v in os.environ
    )
    warn = (
        f"  <-- NOT torch's {threads}: set OPENBLAS_NUM_THREADS={threads}"
        if count and count != threads
        else ""
    )
    return f"{blas.get('name', '?')} {blas.get('version', '')}, {count or '?'} threads, kernel {core or '?'} (threadpoolctl{env}){warn}"


def cpu_clock():
    """(seconds of CPU busy on the whole machine, seconds used by this process, wall seconds), or None."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    # all but idle and iowait
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return busy, sum(os.times()[:2]), time.monotonic()


def others_share(start) -> str:
    """How much of the machine other processes used since ``start`` (they make timings noisy)."""
    end = cpu_clock()
    if start is None or end is None:
        return "CPU use by other processes: unknown"
    share = ((end[0] - start[0]) - (end[1] - start[1])) / (
        (end[2] - start[2]) * os.cpu_count()
    )
    flag = (
        "  <-- BUSY MACHINE: other processes competed for the cores; rerun when idle"
        if share > 0.05
        else ""
    )
    return f"CPU use by other processes during timing: {max(share, 0):.0%} of the machine{flag}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                line.split(":", 1)[1].strip()
                for line in f
                if line.startswith("model name")
            )
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def matmul_peak(n: int = 2048, repeats: int = 5) -> dict:
    """Best float32 GFLOP/s of an n x n matmul, NumPy and torch, timed alternately."""
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    best = race(
        {"numpy": lambda: a @ b, "torch": lambda: ta @ tb}, repeats, warmup=1, settle=1
    )
    return {k: 2 * n**3 / v[1] / 1e9 for k, v in best.items()}


def profile(m, x: np.ndarray, dy: np.ndarray, repeats: int, measured: dict) -> None:
    """Time the NumPy forward's and backward's building blocks one by one, at the benchmark's shapes."""
    N, L, E = x.shape
    H, hd = m.num_heads, m.head_dim
    scale = np.float32(1.0 / math.sqrt(hd))
    W_qkv, b_qkv = (
        np.concatenate([m.W_Q, m.W_K, m.W_V], axis=1),
        np.concatenate([m.b_Q, m.b_K, m.b_V]),
    )
    x2, dy2 = x.reshape(N * L, E), dy.reshape(N * L, E)
    # (3, N, H, L, hd) views
    qkv = (x2 @ W_qkv + b_qkv).reshape(N, L, 3, H, hd).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    qs = q * scale
    scores = qs @ k.swapaxes(-1, -2)
    w = _softmax_inplace(scores.copy())
    heads = w @ v
    concat = heads.transpose(0, 2, 1, 3).reshape(N * L, E)
    d_heads = (dy2 @ m.W_O.T).reshape(N, L, H, hd).transpose(0, 2, 1, 3)
    dscores = softmax_backward(d_heads @ v.swapaxes(-1, -2), w)
    dq, dk, dv = (
        (dscores @ k) * scale,
        dscores.swapaxes(-1, -2) @ qs,
        w.swapaxes(-1, -2) @ d_heads,
    )
    d_qkv = np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(N * L, 3 * E)
    # softmax in place again and again: same work each time (the values stay finite)
    buf = scores.copy()
    # FLOPs of one E x E projection / one attention matmul
    proj, att = (
        2 * N * L * E * E,
        2 * N * L * L * E,
    )
    forward = [
        ("in-projection x @ W_qkv + b", lambda: x2 @ W_qkv + b_qkv, 3 * proj),
        ("scale q", lambda: q * scale, 0),
        ("scores q @ k^T", lambda: qs @ k.swapaxes(-1, -2), att),
        ("softmax (in place)", lambda: _softmax_inplace(buf), 0),
        ("weights @ v", lambda: w @ v, att),
        (
            "merge heads (copy)",
            lambda: heads.transpose(0, 2, 1, 3).reshape(N * L, E),
            0,
        ),
        ("out-projection concat @ W_O + b", lambda: concat @ m.W_O + m.b_O, proj),
    ]
    backward = [
        ("dW_O, db_O", lambda: (concat.T @ dy2, dy2.sum(axis=0)), proj),
        ("d_concat = dy @ W_O^T", lambda: dy2 @ m.W_O.T, proj),
        ("dv = w^T @ d_heads", lambda: w.swapaxes(-1, -2) @ d_heads, att),
        ("dw = d_heads @ v^T", lambda: d_heads @ v.swapaxes(-1, -2), att),
        ("softmax backward", lambda: softmax_backward(dscores, w), 0),
        ("dq = dscores @ k * scale", lambda: (dscores @ k) * scale, att),
        ("dk = dscores^T @ q", lambda: dscores.swapaxes(-1, -2) @ qs, att),
        (
            "stack dq, dk, dv (copy)",
            lambda: (
                np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(N * L, 3 * E)
            ),
            0,
        ),
        ("dW_qkv, db_qkv", lambda: (x2.T @ d_qkv, d_qkv.sum(axis=0)), 3 * proj),
        ("dx = d_qkv @ W_qkv^T", lambda: d_qkv @ W_qkv.T, 3 * proj),
    ]
    for title, stages, label in (
        ("forward", forward, "whole forward"),
        ("backward", backward, "forward+backward - forward"),
    ):
        rows = [
            (name, race({name: fn}, repeats, warmup=1)[name][0], flops)
            for name, fn, flops in stages
        ]
        total = sum(r[1] for r in rows)
        print(
            f"\nprofile: numpy {title}, building blocks timed alone (median of {repeats})"
        )
        print(f"  {'stage':34} {'ms':>8} {'share':>7} {'GFLOP/s':>8}")
        for name, t, flops in rows:
            rate = f"{flops / t / 1e9:.1f}" if flops else "-"
            print(f"  {name:34} {t * 1e3:8.2f} {t / total:7.1%} {rate:>8}")
        print(
            f"  {'sum of stages':34} {total * 1e3:8.2f}   ({label}: {measured[title] * 1e3:.2f} ms)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    for flag, default in (
        ("--batch", 16),
        ("--seq", 256),
        ("--d-model", 384),
        ("--heads", 6),
        ("--repeats", 20),
        ("--warmup", 3),
        ("--settle", SETTLE),
        ("--threads", torch.get_num_threads()),
    ):
        p.add_argument(flag, type=int, default=default)
    p.add_argument(
        "--profile",
        action="store_true",
        help="break the NumPy forward/backward into stages",
    )
    a = p.parse_args()

    env_set = {v: os.environ[v] for v in OPENBLAS_VARS if v in os.environ}
    if env_set:
        bar = "!" * 78
        print(
            f"{bar}\nWARNING: {env_set} set: NumPy's OpenBLAS was loaded with it and may be much slower.\n"
            f"Unset it before the process starts: make bench, or\n"
            f"  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_mha.py\n{bar}",
            file=sys.stderr,
        )
    torch.set_num_threads(a.threads)
    mha.parallel.set_num_threads(a.threads)
    blas = numpy_blas(a.threads)
    B, T, C, H = a.batch, a.seq, a.d_model, a.heads
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, CPU {cpu_model()} "
        f"({os.cpu_count()} logical)"
    )
    print(
        f"torch threads {torch.get_num_threads()}; mha threads {mha.parallel.get_num_threads()} (its BLAS calls on one "
        f"thread each); numpy BLAS: {blas}; OPENBLAS_CORETYPE/L2_SIZE: {env_set or 'unset'}"
    )
    print(
        f"shape B={B} T={T} C={C} heads={H} float32, repeats {a.repeats}, warmup {a.warmup}, settle {a.settle}"
    )

    m = mha.MultiHeadAttention(C, H, dtype=np.float32, seed=0)
    t = mha.to_pytorch(m)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, C), dtype=np.float32)
    dy = rng.standard_normal((B, T, C), dtype=np.float32)
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    xg = xt.clone().requires_grad_(True)
    fast_default = torch.backends.mha.get_fastpath_enabled()

    def torch_fast():
        with torch.inference_mode():
            return t(xt, xt, xt, need_weights=False)[0]

    def torch_slow():
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return torch_fast()
        finally:
            torch.backends.mha.set_fastpath_enabled(fast_default)

    def numpy_fb():
        m(x)
        return m.backward(dy)

    def torch_fb():
        t.zero_grad(set_to_none=True)
        xg.grad = None
        t(xg, xg, xg, need_weights=False)[0].backward(dyt)
        return xg.grad

    # Never benchmark wrong code: compare once before timing.
    out = m(x)
    diffs = {
        "forward vs fast path": np.abs(out - torch_fast().numpy()).max(),
        "forward vs slow path": np.abs(out - torch_slow().numpy()).max(),
        "dx": np.abs(numpy_fb() - torch_fb().numpy()).max(),
    }
    print("max |numpy - torch|: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    if max(diffs.values()) > 1e-5:
        sys.exit("numpy and torch disagree by more than 1e-5: not benchmarking")
    # which route does torch take? count fused calls
    native, used = (
        torch._native_multi_head_attention,
        [],
    )
    torch._native_multi_head_attention = lambda *args, **kw: (
        used.append(1) or native(*args, **kw)
    )
    try:
        used_by = {}
        for route, fn in (("fast", torch_fast), ("slow", torch_slow)):
            used.clear()
            fn()
            used_by[route] = bool(used)
    finally:
        torch._native_multi_head_attention = native
    print(
        f"torch's fused _native_multi_head_attention used by: fast path {used_by['fast']}, slow path {used_by['slow']}"
    )

    clock = cpu_clock()
    peak = matmul_peak()
    print(
        f"float32 matmul peak (2048^3, best of 5): numpy {peak['numpy']:.1f} GFLOP/s, torch {peak['torch']:.1f} GFLOP/s"
    )
    fwd = race(
        {"numpy": lambda: m(x), "fast": torch_fast, "slow": torch_slow},
        a.repeats,
        a.warmup,
        a.settle,
    )
    fb = race({"numpy": numpy_fb, "torch": torch_fb}, a.repeats, a.warmup, a.settle)

    # NumPy's own lower bound: the forward's four matmuls, each timed alone, bare np.matmul.
    W_in, W_O = np.concatenate([m.W_Q, m.W_K, m.W_V], axis=1), m.W_O
    x2, hd = x.reshape(B * T, C), C // H
    # (B, H, T, hd)
    q4 = np.ascontiguousarray(x.reshape(B, T, H, hd).transpose(0, 2, 1, 3))
    kT = np.ascontiguousarray(q4.transpose(0, 1, 3, 2))  # (B, H, hd, T)
    w4 = rng.random((B, H, T, T), dtype=np.float32)
    four = race(
        {
            "in-projection": lambda: x2 @ W_in,
            "scores": lambda: q4 @ kT,
            "weights @ V": lambda: w4 @ q4,
            "out-projection": lambda: x2 @ W_O,
        },
        a.repeats,
        a.warmup,
        a.settle,
    )
    own = sum(t[0] for t in four.values())
    threads_before = mha.parallel.get_num_threads()
    mha.parallel.set_num_threads(1)
    try:
        serial = race(
            {"forward": lambda: m(x), "fb": numpy_fb}, a.repeats, a.warmup, a.settle
        )
    finally:
        mha.parallel.set_num_threads(threads_before)

    flops = 8 * B * T * C * C + 4 * B * T * T * C
    rows = [
        ("forward, torch fast path", fwd["numpy"], fwd["fast"], flops),
        ("forward, torch slow path", fwd["numpy"], fwd["slow"], flops),
        ("forward + backward", fb["numpy"], fb["torch"], 3 * flops),
    ]
    print(
        f"\n{'case':25} {'numpy ms':>17} {'torch ms':>17} {'ratio':>6} {'numpy GF/s':>10} {'torch GF/s':>10}"
        f" {'numpy %pk':>9} {'torch %pk':>9}"
    )
    for name, (nm, nmin), (tm, tmin), fl in rows:
        print(
            f"{name:25} {nm * 1e3:8.2f} ({nmin * 1e3:6.2f}) {tm * 1e3:8.2f} ({tmin * 1e3:6.2f}) {nm / tm:6.2f}"
            f" {fl / nm / 1e9:10.1f} {fl / tm / 1e9:10.1f} {fl / nm / 1e9 / peak['numpy']:9.1%}"
            f" {fl / tm / 1e9 / peak['numpy']:9.1%}"
        )
    fwd_ratio = fwd["numpy"][0] / min(fwd["fast"][0], fwd["slow"][0])
    fb_ratio = fb["numpy"][0] / fb["torch"][0]
    print(
        f"\nGoal: forward {fwd_ratio:.2f}x the faster torch path (<= 1.0: {'PASS' if fwd_ratio <= 1.0 else 'MISS'}), "
        f"forward+backward {fb_ratio:.2f}x (<= 1.25: {'PASS' if fb_ratio <= 1.25 else 'MISS'})"
    )
    print(
        f"forward {fwd['numpy'][0] / own:.2f}x its own four matmuls ({own * 1e3:.2f} ms: "
        + ", ".join(f"{k} {v[0] * 1e3:.2f}" for k, v in four.items())
        + f") (<= 1.15: {'PASS' if fwd['numpy'][0] / own <= 1.15 else 'MISS'})"
    )
    print(
        f"serial path (mha threads 1): forward {serial['forward'][0] * 1e3:.2f} ms "
        f"({serial['forward'][0] / own:.2f}x own matmuls), forward+backward {serial['fb'][0] * 1e3:.2f} ms "
        f"({serial['fb'][0] / fb['torch'][0]:.2f}x torch)"
    )
    if a.profile:
        profile(
            m,
            x,
            dy,
            a.repeats,
            {"forward": fwd["numpy"][0], "backward": fb["numpy"][0] - fwd["numpy"][0]},
        )
    print(others_share(clock))


if __name__ == "__main__":
    main()
