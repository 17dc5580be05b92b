"""mha: multi-head attention in NumPy, torch-exact forward and backward.

The one implementation that every chapter of the book imports:

- ``mha.functional``, the book's building blocks, each forward beside its backward: :func:`linear`,
  :func:`split_heads`, :func:`merge_heads`, :func:`softmax`, :func:`scaled_dot_product_attention`,
  :func:`attention_weights`
- ``mha.analysis``: measuring attention maps (entropy, top-k keys, sparsity, comparing two maps)
- :class:`MultiHeadAttention`, ``nn.MultiheadAttention``'s eval-mode semantics (``mha.attention``);
  on large inputs it shares its work among threads (``mha.parallel``; ``mha.parallel.set_num_threads(1)``
  runs the plain serial code, with the same results)
- the torch bridge: :func:`load_weights_from_pytorch`, :func:`compare_outputs`,
  :func:`create_matching_mha`, :func:`analyze_weight_differences`,
  :func:`to_pytorch`, :func:`torch_state_dict` (``mha.torch_bridge``; torch is imported lazily)
- :class:`SequentialMHA`, one module per head, and its conversions (``mha.sequential``, ``mha.convert``)
- ``mha.positional``: sinusoidal positional encoding and RoPE, forward and backward
- attention at scale: ``mha.tiled`` (online softmax, tiled attention forward and backward),
  ``mha.kv_cache`` (KV cache, decode step, grouped-query attention)
- training: ``mha.losses`` (cross-entropy and its backward), ``mha.optim`` (Adam),
  ``mha.model`` (the tiny model; its torch twin in ``mha.model_torch``), ``mha.train`` (tasks,
  the loop, accuracy)
- ``mha.plot`` for the book's figures (imported on first use, so matplotlib is not needed to compute)
- :func:`report_match`, :func:`max_abs_diff`: printed verdicts that are the same on every machine
- ``mha.exercises``: the check cells of the book's exercises
"""

from types import ModuleType

from . import (
    analysis,
    functional,
    kv_cache,
    losses,
    model,
    optim,
    positional,
    tiled,
    train,
)
from .attention import MultiHeadAttention
from .convert import fused_to_sequential, sequential_to_fused
from .functional import (
    attention_weights,
    linear,
    merge_heads,
    scaled_dot_product_attention,
    softmax,
    split_heads,
)
from .sequential import SequentialMHA
from .torch_bridge import (
    analyze_weight_differences,
    compare_outputs,
    create_matching_mha,
    load_weights_from_pytorch,
    to_pytorch,
    torch_state_dict,
)
from .verify import max_abs_diff, report_match

__version__ = "0.1.0"

__all__ = [
    "linear",
    "split_heads",
    "merge_heads",
    "softmax",
    "attention_weights",
    "scaled_dot_product_attention",
    "MultiHeadAttention",
    "SequentialMHA",
    "sequential_to_fused",
    "fused_to_sequential",
    "load_weights_from_pytorch",
    "compare_outputs",
    "create_matching_mha",
    "analyze_weight_differences",
    "to_pytorch",
    "torch_state_dict",
    "max_abs_diff",
    "report_match",
    "functional",
    "analysis",
    "positional",
    "tiled",
    "kv_cache",
    "losses",
    "optim",
    "model",
    "train",
    "plot",
    "exercises",
]


def __getattr__(name: str) -> ModuleType:
    # `mha.plot` without importing matplotlib for users who never plot
    if name in ("plot", "exercises"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'mha' has no attribute {name!r}")
