"""Moving weights between ``mha.MultiHeadAttention`` and ``torch.nn.MultiheadAttention``.

torch keeps its parameters in (out_features, in_features) layout:

- ``in_proj_weight`` (3E, E) = [W_Q^T; W_K^T; W_V^T] stacked by rows, used
  when kdim == vdim == E; otherwise ``q_proj_weight`` (E, E),
  ``k_proj_weight`` (E, kdim), ``v_proj_weight`` (E, vdim);
- ``in_proj_bias`` (3E,) = [b_Q; b_K; b_V]; ``out_proj.weight`` (E, E) =
  W_O^T; ``out_proj.bias`` (E,); ``bias_k``, ``bias_v`` (1, 1, E).

torch is imported inside the functions, so ``mha`` works without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ._checks import positive_int
from .attention import BIAS_NAMES, PARAMETER_NAMES, MultiHeadAttention
from .functional import causal_mask
from .verify import abs_diff, as_float64, max_abs_diff

if TYPE_CHECKING:  # torch is optional: imported for the annotations only
    import torch
    from numpy.typing import ArrayLike, DTypeLike

__all__ = [
    "load_weights_from_pytorch",
    "compare_outputs",
    "Comparison",
    "create_matching_mha",
    "analyze_weight_differences",
    "to_pytorch",
    "torch_state_dict",
]


def _torch() -> Any:
    import torch  # lazy: only the bridge needs torch

    return torch


def _check_pair(
    numpy_mha: MultiHeadAttention, pytorch_mha: torch.nn.MultiheadAttention
) -> None:
    if not isinstance(numpy_mha, MultiHeadAttention):
        raise TypeError(
            f"numpy_mha must be an mha.MultiHeadAttention, got {type(numpy_mha).__name__}"
        )
    torch = _torch()
    if not isinstance(pytorch_mha, torch.nn.MultiheadAttention):
        raise TypeError(
            f"pytorch_mha must be a torch.nn.MultiheadAttention, got {type(pytorch_mha).__name__}"
        )
    for ours, theirs, label in (
        (numpy_mha.d_model, pytorch_mha.embed_dim, "d_model / embed_dim"),
        (numpy_mha.num_heads, pytorch_mha.num_heads, "num_heads"),
        (numpy_mha.kdim, pytorch_mha.kdim, "kdim"),
        (numpy_mha.vdim, pytorch_mha.vdim, "vdim"),
    ):
        if ours != theirs:
            raise ValueError(
                f"{label} differ: numpy_mha has {ours}, pytorch_mha has {theirs}"
            )


def _to_numpy(tensor: torch.Tensor | None) -> np.ndarray | None:
    """A float64 copy of a torch tensor (None stays None): :func:`mha.verify.as_float64`."""
    return None if tensor is None else as_float64(tensor)


def _torch_parameters(pytorch_mha: torch.nn.MultiheadAttention) -> dict[str, Any]:
    """torch's parameters in ``mha``'s names and (in, out) layout, as float64 arrays."""
    E = pytorch_mha.embed_dim
    if pytorch_mha._qkv_same_embed_dim:
        in_proj = as_float64(pytorch_mha.in_proj_weight)  # (3E, E)
        # rows of torch -> columns here
        W_Q, W_K, W_V = (in_proj[i * E : (i + 1) * E].T for i in range(3))
    else:
        W_Q, W_K, W_V = (
            as_float64(getattr(pytorch_mha, n)).T
            for n in ("q_proj_weight", "k_proj_weight", "v_proj_weight")
        )
    params: dict[str, np.ndarray | None] = {
        "W_Q": W_Q,
        "W_K": W_K,
        "W_V": W_V,
        "W_O": as_float64(pytorch_mha.out_proj.weight).T,
    }
    in_bias = _to_numpy(pytorch_mha.in_proj_bias)
    for i, name in enumerate(BIAS_NAMES[:3]):
        params[name] = None if in_bias is None else in_bias[i * E : (i + 1) * E]
    params["b_O"] = _to_numpy(pytorch_mha.out_proj.bias)
    for name in ("bias_k", "bias_v"):
        value = getattr(pytorch_mha, name)
        params[name] = None if value is None else as_float64(value).reshape(E)
    return params


def load_weights_from_pytorch(
    numpy_mha: MultiHeadAttention, pytorch_mha: torch.nn.MultiheadAttention
) -> MultiHeadAttention:
    """Copy ``pytorch_mha``'s parameters into ``numpy_mha`` (returned for chaining).

    Transposes each weight from torch's (out, in) to NumPy's (in, out)
    layout and splits ``in_proj_weight``/``in_proj_bias`` into Q, K, V.
    Optional parameters follow the torch module (a missing bias becomes
    None), and so does ``add_zero_attn``: afterwards ``numpy_mha`` computes
    what ``pytorch_mha`` computes. The torch module may be float64 or on a
    GPU; it is never changed. Dimensions must agree (ValueError otherwise).
    """
    _check_pair(numpy_mha, pytorch_mha)
    for name, value in _torch_parameters(pytorch_mha).items():
        setattr(
            numpy_mha,
            name,
            None
            if value is None
            else np.ascontiguousarray(value, dtype=numpy_mha.dtype),
        )
    numpy_mha.add_zero_attn = bool(pytorch_mha.add_zero_attn)
    numpy_mha.grads, numpy_mha._cache = {}, None
    return numpy_mha


class Comparison(NamedTuple):
    """Result of :func:`compare_outputs`: truthy exactly when the outputs match."""

    match: bool
    max_diff: float

    def __bool__(self) -> bool:
        return self.match


def compare_outputs(
    numpy_mha: MultiHeadAttention,
    pytorch_mha: torch.nn.MultiheadAttention,
    x: ArrayLike,
    atol: float = 1e-5,
    *,
    key: ArrayLike | None = None,
    value: ArrayLike | None = None,
    **forward_kwargs: Any,
) -> Comparison:
    """Run both modules on ``x`` (and optional ``key``/``value``) and compare.

    ``x`` is in ``numpy_mha``'s layout (``batch_first``); it is converted for
    torch. ``forward_kwargs`` (masks, ``is_causal``) go to both; torch gets
    ``is_causal``'s mask explicitly, the reference route. Returns
    ``Comparison(match, max_diff)``: ``match`` is ``max |numpy - torch| <= atol``
    (False if either output has NaN), ``max_diff`` a Python float.
    """
    _check_pair(numpy_mha, pytorch_mha)
    torch = _torch()
    if isinstance(atol, bool) or not isinstance(atol, (int, float, np.floating)):
        raise TypeError(
            f"atol must be a non-negative number, got {atol!r} ({type(atol).__name__})"
        )
    if not atol >= 0:
        raise ValueError(f"atol must be a non-negative number, got {atol}")
    if "need_weights" in forward_kwargs:
        raise ValueError(
            "compare_outputs compares outputs only: leave need_weights out "
            f"(got need_weights={forward_kwargs['need_weights']!r})"
        )
    if pytorch_mha.training and pytorch_mha.dropout > 0:
        raise ValueError(
            f"pytorch_mha is in training mode with dropout={pytorch_mha.dropout}: "
            "dropout cannot be matched element for element; call pytorch_mha.eval() first"
        )
    ours = numpy_mha(x, key, value, **forward_kwargs)
    param = pytorch_mha.out_proj.weight
    x_q = np.asarray(x)
    x_k = x_q if key is None else np.asarray(key)
    x_v = x_k if value is None else np.asarray(value)

    def to_torch(a: np.ndarray) -> Any:  # a torch.Tensor
        if a.ndim == 3 and numpy_mha.batch_first != pytorch_mha.batch_first:
            a = a.transpose(1, 0, 2)  # swap (N, L, E) <-> (L, N, E)
        return torch.as_tensor(
            np.ascontiguousarray(a), dtype=param.dtype, device=param.device
        )

    kwargs = dict(forward_kwargs)
    seq_axis = 1 if x_q.ndim == 3 and numpy_mha.batch_first else 0
    L, S = x_q.shape[seq_axis], x_k.shape[seq_axis]
    if kwargs.pop("is_causal", False) and kwargs.get("attn_mask") is None:
        kwargs["attn_mask"] = ~causal_mask(L, S)  # torch's polarity: True = blocked
    for name in ("attn_mask", "key_padding_mask"):
        if kwargs.get(name) is not None:
            m = np.asarray(kwargs[name])
            kwargs[name] = torch.as_tensor(
                m,
                dtype=None if m.dtype == np.bool_ else param.dtype,
                device=param.device,
            )
    q_t = to_torch(x_q)
    k_t = q_t if key is None else to_torch(x_k)
    v_t = k_t if value is None else to_torch(x_v)
    with torch.no_grad():
        theirs, _ = pytorch_mha(q_t, k_t, v_t, need_weights=False, **kwargs)
    theirs = as_float64(theirs)
    if theirs.ndim == 3 and numpy_mha.batch_first != pytorch_mha.batch_first:
        theirs = theirs.transpose(1, 0, 2)
    max_diff = max_abs_diff(ours, theirs)
    # a NaN never matches, even torch's own
    if np.isnan(max_diff) or np.isnan(theirs).any():
        return Comparison(False, float("nan"))
    return Comparison(bool(max_diff <= atol), max_diff)


def create_matching_mha(
    d_model: int,
    num_heads: int,
    *,
    seed: int | None = None,
    dtype: DTypeLike = np.float32,
    **options: Any,
) -> tuple[MultiHeadAttention, torch.nn.MultiheadAttention]:
    """A new ``nn.MultiheadAttention`` (eval mode) and an ``mha.MultiHeadAttention`` with its weights.

    ``options`` are ``nn.MultiheadAttention``'s (``bias``, ``add_bias_kv``,
    ``add_zero_attn``, ``kdim``, ``vdim``, ``batch_first``; default
    ``batch_first=True``). ``dtype`` (NumPy float32/float64) sets both
    modules' precision; ``seed`` makes torch's initialisation repeatable
    without touching torch's global RNG. ``dropout`` must be 0: dropout
    draws a random mask, which cannot be matched element for element.
    Returns ``(numpy_mha, pytorch_mha)``.
    """
    torch = _torch()
    positive_int(d_model, "d_model")
    positive_int(num_heads, "num_heads")
    dropout = options.pop("dropout", 0.0)
    if dropout:
        raise ValueError(
            f"dropout must be 0, got {dropout}: dropout zeroes a random set of weights on every call, "
            "which cannot be matched element for element"
        )
    allowed = {
        "bias",
        "add_bias_kv",
        "add_zero_attn",
        "kdim",
        "vdim",
        "batch_first",
        "device",
    }
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(
            f"create_matching_mha got unexpected options {unknown}; expected some of {sorted(allowed)}, seed, dtype"
        )
    options.setdefault("batch_first", True)
    numpy_mha = MultiHeadAttention(
        d_model,
        num_heads,
        dtype=dtype,
        **{k: v for k, v in options.items() if k != "device"},
    )
    torch_dtype = torch.float64 if numpy_mha.dtype == np.float64 else torch.float32
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        pytorch_mha = torch.nn.MultiheadAttention(
            d_model, num_heads, dtype=torch_dtype, **options
        ).eval()
    load_weights_from_pytorch(numpy_mha, pytorch_mha)
    return numpy_mha, pytorch_mha


def analyze_weight_differences(
    numpy_mha: MultiHeadAttention, pytorch_mha: torch.nn.MultiheadAttention
) -> dict[str, dict[str, float]]:
    """Per parameter ``{"max_diff": float, "mean_diff": float}`` between the two modules.

    Keys are ``mha``'s names (``"W_Q"``, ..., ``"bias_v"``); a parameter
    that is missing on one side counts as zeros there (that is what it
    computes); one missing on both sides is left out.
    """
    _check_pair(numpy_mha, pytorch_mha)
    theirs = _torch_parameters(pytorch_mha)
    report = {}
    for name in PARAMETER_NAMES:
        a, b = getattr(numpy_mha, name), theirs[name]
        if a is None and b is None:
            continue
        a = np.zeros_like(b) if a is None else as_float64(a, name)
        b = np.zeros_like(a) if b is None else b
        diff = abs_diff(a, b)
        report[name] = {"max_diff": float(diff.max()), "mean_diff": float(diff.mean())}
    return report


def torch_state_dict(
    numpy_mha: MultiHeadAttention, grads: bool = False
) -> dict[str, np.ndarray]:
    """``{torch parameter name: array}`` in torch's names and (out, in) layout.

    With ``grads=True`` the gradients of the last :meth:`backward`, so they
    compare one to one with torch's ``.grad``.
    """
    if not isinstance(numpy_mha, MultiHeadAttention):
        raise TypeError(
            f"numpy_mha must be an mha.MultiHeadAttention, got {type(numpy_mha).__name__}"
        )
    if grads and not numpy_mha.grads:
        raise RuntimeError(
            "torch_state_dict(grads=True) needs gradients: call backward() first"
        )
    source = numpy_mha.grads if grads else numpy_mha.parameters()
    p: dict[str, Any] = {name: source.get(name) for name in PARAMETER_NAMES}
    E = numpy_mha.d_model
    state = {}
    if numpy_mha.kdim == E and numpy_mha.vdim == E:
        # (3E, E)
        state["in_proj_weight"] = np.concatenate(
            [p["W_Q"].T, p["W_K"].T, p["W_V"].T], axis=0
        )
    else:
        state.update(
            q_proj_weight=p["W_Q"].T.copy(),
            k_proj_weight=p["W_K"].T.copy(),
            v_proj_weight=p["W_V"].T.copy(),
        )
    state["out_proj.weight"] = p["W_O"].T.copy()
    # torch has all four biases or none: a missing one is zeros
    if any(p[n] is not None for n in BIAS_NAMES):
        zero = np.zeros(E, numpy_mha.dtype)
        state["in_proj_bias"] = np.concatenate(
            [zero if p[n] is None else p[n] for n in BIAS_NAMES[:3]]
        )
        state["out_proj.bias"] = zero.copy() if p["b_O"] is None else p["b_O"].copy()
    if p["bias_k"] is not None:
        state["bias_k"] = p["bias_k"].reshape(1, 1, E).copy()
        state["bias_v"] = p["bias_v"].reshape(1, 1, E).copy()
    return state


def to_pytorch(
    numpy_mha: MultiHeadAttention, device: str | torch.device | None = None
) -> torch.nn.MultiheadAttention:
    """A new ``nn.MultiheadAttention`` (eval mode) holding ``numpy_mha``'s weights."""
    torch = _torch()
    state = torch_state_dict(numpy_mha)
    torch_dtype = torch.float64 if numpy_mha.dtype == np.float64 else torch.float32
    module = torch.nn.MultiheadAttention(
        numpy_mha.d_model,
        numpy_mha.num_heads,
        bias="in_proj_bias" in state,
        add_bias_kv="bias_k" in state,
        add_zero_attn=numpy_mha.add_zero_attn,
        kdim=numpy_mha.kdim,
        vdim=numpy_mha.vdim,
        batch_first=numpy_mha.batch_first,
        dtype=torch_dtype,
        device=device,
    )
    module.load_state_dict(
        {k: torch.as_tensor(v) for k, v in state.items()}, strict=True
    )
    return module.eval()
