"""mha.parallel: the threaded layer computes exactly what the serial one does, and matches torch.

The book's small examples stay below ``MIN_PARALLEL_SIZE`` and run serially; the
fixture ``threaded`` lowers the threshold so that the same small cases go through
the threads, chunks and BLAS limit that large inputs (the seed's 16 x 256 x 384) take.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading

import numpy as np
import pytest
from helpers import CONSTRUCTOR, LAYOUTS, MASKS, check_case, make_masks, option_ids
from threadpoolctl import threadpool_info

import mha
import mha.functional
from mha import parallel


@pytest.fixture
def threaded(monkeypatch):
    """Threads for every input size, 2 of them whatever the machine; the chunks are counted."""
    monkeypatch.setattr(parallel, "MIN_PARALLEL_SIZE", 0)
    before = parallel.get_num_threads()
    parallel.set_num_threads(2)
    calls = []
    real = mha.functional.attention_forward
    monkeypatch.setattr(
        mha.functional,
        "attention_forward",
        lambda *a, **k: calls.append(a[0].shape) or real(*a, **k),
    )
    yield calls
    parallel.set_num_threads(before)


def blas_threads():
    return [
        lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"
    ]


def _run(m, q, k, v, grad_seed=0, **kwargs):
    """Everything a forward and backward produce: output, weights, input gradients, parameter gradients."""
    if k is None:
        out, weights = m(q, need_weights=True, average_attn_weights=False, **kwargs)
    else:
        out, weights = m(
            q, k, v, need_weights=True, average_attn_weights=False, **kwargs
        )
    dout = np.random.default_rng(grad_seed).standard_normal(out.shape).astype(out.dtype)
    d_in = m.backward(dout)
    d_in = d_in if isinstance(d_in, tuple) else (d_in,)
    return {
        "output": out,
        "weights": weights,
        **{f"grad input {i}": d for i, d in enumerate(d_in)},
        **{f"grad {name}": g for name, g in m.grads.items()},
    }


@pytest.mark.parametrize(
    "N, H",
    [(9, 2), (3, 4), (1, 4), (2, 1), (5, 2)],
    ids=["batch-split", "batch-and-head-split", "head-split", "one-head", "uneven"],
)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"add_bias_kv": True, "add_zero_attn": True},
        {"kdim": 6, "vdim": 10},
        {"bias": False},
    ],
    ids=option_ids,
)
def test_threads_change_no_bit_of_any_result(threaded, N, H, options):
    E, L, S = 8, 5, 7
    rng = np.random.default_rng(1)
    m = mha.MultiHeadAttention(E, H, seed=2, **options)
    for name, p in m.parameters().items():  # non-zero biases, so a bias bug cannot hide
        setattr(m, name, (p + rng.standard_normal(p.shape)).astype(p.dtype))
    q = rng.standard_normal((N, L, E)).astype(np.float32)
    k = rng.standard_normal((N, S, m.kdim)).astype(np.float32)
    v = rng.standard_normal((N, S, m.vdim)).astype(np.float32)
    # self-attention (one fused projection) or cross
    args = (q, None, None) if not options else (q, k, v)
    masks = make_masks(
        "kpm_and_attn", rng, N, L, L if args[1] is None else S, True, np.float32
    )[0]
    threaded_results = _run(m, *args, **masks)
    assert len(threaded) > 1, (
        f"the threaded path ran {len(threaded)} chunk: the fixture does not test threads"
    )
    parallel.set_num_threads(1)
    threaded.clear()
    serial_results = _run(m, *args, **masks)
    assert len(threaded) == 1
    assert threaded_results.keys() == serial_results.keys()
    for label, ours in threaded_results.items():
        np.testing.assert_array_equal(
            ours, serial_results[label], err_msg=f"{label}: threads changed the result"
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mask_kind", MASKS[::2])
@pytest.mark.parametrize("options", CONSTRUCTOR[::3], ids=option_ids)
def test_threaded_layer_matches_torch_cross_attention(
    threaded, options, mask_kind, dtype
):
    check_case(
        options,
        mask_kind,
        "batch_first",
        dtype,
        self_attention=False,
        average=False,
        seed=11,
    )
    assert len(threaded) > 1


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mask_kind", ["none", "causal", "attn3d_float"])
def test_threaded_layer_matches_torch_self_attention(threaded, layout, mask_kind):
    check_case(
        {"add_bias_kv": True},
        mask_kind,
        layout,
        np.float32,
        self_attention=True,
        average=True,
        seed=12,
    )
    assert len(threaded) > 1


def test_the_seed_shape_takes_the_threads_by_default(monkeypatch):
    """At 16 x 256 x 384 the default threshold and thread count pick the threaded path."""
    if parallel.get_num_threads() == 1:
        pytest.skip("this machine gives the process one core: mha runs serially")
    calls = []
    real = mha.functional.attention_forward
    monkeypatch.setattr(
        mha.functional,
        "attention_forward",
        lambda *a, **k: calls.append(1) or real(*a, **k),
    )
    x = np.random.default_rng(0).standard_normal((16, 256, 384)).astype(np.float32)
    mha.MultiHeadAttention(384, 6, seed=0)(x)
    assert len(calls) > 1


def test_the_blas_thread_count_is_restored_after_forward_and_backward(threaded):
    before = blas_threads()
    m = mha.MultiHeadAttention(8, 2, seed=0)
    m.backward(m(np.ones((2, 3, 8), np.float32)))
    assert len(threaded) > 1
    assert blas_threads() == before


def test_without_threadpoolctl_the_layer_runs_serially(threaded, monkeypatch):
    # as if threadpoolctl were missing or found no BLAS
    monkeypatch.setattr(parallel, "_blas", False)
    m = mha.MultiHeadAttention(8, 2, seed=0)
    with parallel.threads(10**9) as pmap:
        assert pmap is None
    m(np.ones((2, 3, 8), np.float32))
    assert len(threaded) == 1


@pytest.mark.parametrize(
    "bad, error",
    [
        (0, ValueError),
        (-2, ValueError),
        (1.5, TypeError),
        (True, TypeError),
        ("2", TypeError),
        (None, TypeError),
    ],
)
def test_set_num_threads_refuses_bad_counts(bad, error):
    with pytest.raises(error, match=r"n must be a positive int, got"):
        parallel.set_num_threads(bad)


def test_split_covers_every_index_once():
    for n in range(1, 12):
        for parts in range(1, 6):
            pieces = parallel.split(n, parts)
            assert [i for s in pieces for i in range(n)[s]] == list(range(n))
            assert all(s.stop > s.start for s in pieces)


def _threaded_forward_in_child(queue):
    m = mha.MultiHeadAttention(8, 2, seed=0)
    queue.put(m(np.ones((2, 3, 8), np.float32)).sum())


@pytest.mark.skipif(
    sys.platform != "linux", reason="fork is the default start method only on Linux"
)
def test_a_forked_child_gets_a_pool_of_its_own(threaded):
    m = mha.MultiHeadAttention(8, 2, seed=0)
    # the parent's pool now has threads
    expected = m(np.ones((2, 3, 8), np.float32)).sum()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_threaded_forward_in_child, args=(queue,))
    child.start()
    child.join(timeout=30)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0, "the child hung or failed running a threaded forward"
    assert queue.get(timeout=5) == expected


def test_layers_called_from_several_threads_at_once_agree_and_restore_the_blas(
    threaded,
):
    before = blas_threads()
    m = mha.MultiHeadAttention(8, 2, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 6, 8)).astype(np.float32)
    expected = m(x)
    results, failures = [], []

    def caller():
        try:
            for _ in range(20):
                results.append(mha.MultiHeadAttention(8, 2, seed=0)(x))
        # reported below: an exception in a thread would otherwise vanish
        except Exception as exc:
            failures.append(exc)

    callers = [threading.Thread(target=caller) for _ in range(3)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert not failures
    assert len(results) == 60
    for out in results:
        np.testing.assert_array_equal(out, expected)
    assert blas_threads() == before


# --- the threaded drop-in (mha._threaded) against mha.functional, bit for bit ----------------------

# N, H, L, S, hd. The layer swaps the drop-in in only above parallel.MIN_PARALLEL_SIZE elements of work;
# below it (e.g. 3 rows), OpenBLAS's small-matrix kernels can round a row-split product differently.
BLOCK_SHAPES = [
    (3, 2, 64, 48, 16),
    (1, 6, 300, 7, 64),
    (2, 6, 256, 1, 64),
    # found in issue 8: split in two, the weight gradient (32, 512) @ (512, 96) took OpenBLAS's
    # small-matrix kernel and differed in the last bit; now its pieces stay above that size
    (4, 1, 128, 128, 32),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "R, K, C",
    [(512, 32, 96), (32, 512, 96), (96, 512, 32), (1000, 40, 53), (64, 1024, 64)],
    ids=lambda v: str(v),
)
def test_split_products_are_bitwise_one_product(threaded, R, K, C, dtype):
    """Rows or columns shared out: the same bits as one matmul, on either side of the size
    at which OpenBLAS switches to its small-matrix kernel (parallel.MIN_PIECE_PRODUCT)."""
    rng = np.random.default_rng(R + K + C)
    a = rng.standard_normal((R, K)).astype(dtype)
    b = rng.standard_normal((K, C)).astype(dtype)
    bias = rng.standard_normal(C).astype(dtype)
    with parallel.threads(10**9) as pmap:
        assert pmap is not None, "the test needs the pool (threadpoolctl and 2 threads)"
        rows, cols = (
            parallel.matmul_rows(pmap, a, b, bias),
            parallel.matmul_cols(pmap, a, b),
        )
        # The reference with the BLAS on one thread, as every piece runs: what the split controls.
        # The BLAS's own threads are another matter: OpenBLAS 0.3.27 (numpy 2.0.2's wheel) gives
        # (1000, 40) @ (40, 53) in float64 other last bits on 2 threads than on 1.
        one = a @ b
    assert np.array_equal(cols, one)
    one += bias
    assert np.array_equal(rows, one)


def test_large_products_are_still_shared_out(monkeypatch):
    """The piece-size rule keeps the seed shape's products split, one piece per thread."""
    calls = []
    monkeypatch.setattr(parallel, "_num_threads", 2)
    parallel._in_pieces(
        lambda fn, items: calls.append(list(items)), print, 4096, 384 * 1152
    )
    assert len(calls) == 1 and len(calls[0]) == 2
    calls.clear()
    parallel._in_pieces(
        lambda fn, items: calls.append(list(items)), lambda s: None, 512, 96 * 32
    )
    # 2 pieces of 256 x 96 x 32 would be small products: one call instead
    assert calls == []


@pytest.mark.parametrize("N, H, L, S, hd", BLOCK_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_threaded_blocks_are_bitwise_equal_to_functional(
    threaded, N, H, L, S, hd, dtype, masked
):
    from mha import _threaded

    work = N * L * (H * hd + H * S)  # what the layer measures (attention._work_size)
    assert work >= 1 << 14, work
    rng = np.random.default_rng(N * 1000 + L)
    x = rng.standard_normal((N, L, H * hd)).astype(dtype)
    W, b = (
        rng.standard_normal((H * hd, 3 * H * hd)).astype(dtype),
        rng.standard_normal(3 * H * hd).astype(dtype),
    )
    q, k, v = (rng.standard_normal((N, H, T, hd)).astype(dtype) for T in (L, S, S))
    mask = (
        np.where(rng.random((N, 1, L, S)) < 0.3, -np.inf, 0.0).astype(dtype)
        if masked
        else None
    )
    if masked:
        mask[..., 0] = 0.0  # every query keeps a key
    with parallel.threads(10**9) as pmap:
        assert pmap is not None, "the test needs the pool (threadpoolctl and 2 threads)"
        T = _threaded.ThreadedBlocks(pmap)
        pairs = [(T.linear(x, W, b), mha.functional.linear(x, W, b))]
        dy = rng.standard_normal((N, L, 3 * H * hd)).astype(dtype)
        pairs += zip(
            T.linear_backward(dy, x, W), mha.functional.linear_backward(dy, x, W)
        )
        out_t, cache_t = T.attention_forward(q, k, v, mask)
        out_f, cache_f = mha.functional.attention_forward(q, k, v, mask)
        pairs += [(out_t, out_f), (cache_t["weights"], cache_f["weights"])]
        dout = rng.standard_normal(out_f.shape).astype(dtype)
        pairs += zip(
            T.attention_backward(dout, cache_t),
            mha.functional.attention_backward(dout, cache_f),
        )
    for i, (threaded, serial) in enumerate(pairs):
        assert threaded.dtype == serial.dtype and np.array_equal(threaded, serial), (
            f"pair {i}"
        )


def test_the_layer_picks_functional_when_serial():
    from mha import _threaded

    with _threaded.blocks(1) as F:  # too small for threads
        assert F is mha.functional
