"""Checks for the exercises of appendix A, "Inside torch's ``nn.MultiheadAttention``".

- :func:`check_predict_routes` (predict): ``predict_routes()`` returns four bools, whether
  torch takes its fast path for four calls described in the appendix;
- :func:`check_name_the_option` (diagnose): ``name_the_option()`` returns which option
  (``"add_bias_kv"``, ``"add_zero_attn"`` or ``"neither"``) the module behind
  :func:`mystery_outputs` was built with, judged from where its routes disagree.

The routes are torch's internals as of torch 2.13: the route check measures them on the
installed torch and says so when they differ from 2.13's.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any
from unittest import mock

import numpy as np
import torch

from ._core import check_function as _check_function

__all__ = [
    "check_predict_routes",
    "check_name_the_option",
    "mystery_outputs",
    "COMMON_MISTAKES",
]

_SEED = 15
OPTIONS = ("add_bias_kv", "add_zero_attn", "neither")
_ROUTES_ON_2_13 = (True, False, False, True)


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=88, subsequent_indent="  ")


# --- predict: which calls take the fast path? --------------------------------------------


def _measured_routes() -> tuple[bool, ...]:
    """Run the four calls of the exercise with a spy on torch's fused kernel."""
    torch.manual_seed(_SEED)
    m = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(2, 6, 16)
    native = getattr(torch, "_native_multi_head_attention", None)
    calls = [
        (torch.no_grad, (x, x, x), {}),
        (torch.no_grad, (x, x.clone(), x.clone()), {}),
        (torch.inference_mode, (x, x, x), {"attn_mask": torch.zeros(6, 6)}),
        (
            torch.inference_mode,
            (x, x, x),
            {"key_padding_mask": torch.zeros(2, 6, dtype=torch.bool)},
        ),
    ]
    routes = []
    for context, args, kwargs in calls:
        if native is None:  # the private operator is gone: no fast path
            routes.append(False)
            continue
        with (
            context(),
            mock.patch.object(
                torch, "_native_multi_head_attention", wraps=native
            ) as spy,
        ):
            m(*args, **kwargs)
        routes.append(bool(spy.called))
    return tuple(routes)


def check_predict_routes(predict_routes: Callable[..., Any]) -> bool | None:
    """``predict_routes()`` -> four bools: the fast path taken for calls 1 to 4?"""
    measured = _measured_routes()
    if measured != _ROUTES_ON_2_13:
        print(
            _wrap(
                f"Note: torch {torch.__version__} routes these calls as {measured}; "
                f"torch 2.13 routes them as {_ROUTES_ON_2_13}. The check uses yours."
            )
        )

    def as_bools() -> np.ndarray | None:
        got = predict_routes()
        return None if got is None else np.asarray(got, dtype=bool)

    return _check_function(
        as_bools,
        lambda: np.asarray(measured),
        [()],
        name="predict_routes",
        atol=0.0,
        hint="the fast path needs query, key and value to be one tensor "
        "(an equal copy is not enough) and no float mask; a bool "
        "key_padding_mask is allowed.",
    )


# --- diagnose: which option lost its key on the hint route? -------------------------------


def _mystery_module() -> torch.nn.MultiheadAttention:
    torch.manual_seed(_SEED + 1)
    module = torch.nn.MultiheadAttention(16, 4, add_zero_attn=True, batch_first=True)
    with torch.no_grad():
        module.in_proj_bias.normal_(0, 0.5)
        module.out_proj.bias.normal_(0, 0.5)
    return module.eval()


def mystery_outputs() -> tuple[dict[str, np.ndarray], torch.nn.MultiheadAttention]:
    """({"explicit", "hint", "weights_route"} -> (2, 6, 16) arrays, the torch module)."""
    module = _mystery_module()
    x = torch.from_numpy(
        np.random.default_rng(_SEED).standard_normal((2, 6, 16)).astype(np.float32)
    )
    causal = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    runs = {
        "explicit": {"need_weights": False},
        "hint": {"need_weights": False, "is_causal": True},
        "weights_route": {"need_weights": True, "is_causal": True},
    }
    outputs = {
        name: module(x, x, x, attn_mask=causal, **kwargs)[0].detach().numpy()
        for name, kwargs in runs.items()
    }
    return outputs, module


_WHY = {
    "add_bias_kv": "an add_bias_kv module has bias_k and bias_v among its parameters; "
    "this one has not",
    "neither": "without an extra key the hint route would agree with the mask alone; "
    "here it does not",
}


def check_name_the_option(name_the_option: Callable[..., Any]) -> bool | None:
    """``name_the_option()`` -> one of OPTIONS, the option of the mystery module."""
    name = "name_the_option"
    try:
        got = name_the_option()
    except NotImplementedError:
        print(f"Not attempted yet: {name} still raises NotImplementedError.")
        return None
    except Exception as exc:  # the reader's code may fail in any way: report it
        print(f"Not quite: {name} raised {type(exc).__name__}: {exc}.")
        return False
    if got not in OPTIONS:
        print(_wrap(f"Not quite: {name} must return one of {OPTIONS}, got {got!r}."))
        return False
    if got != "add_zero_attn":
        print(
            _wrap(
                f"Not quite: {_WHY[got]}. Which outputs agree, and which parameters "
                "does the module have?"
            )
        )
        return False
    print(
        _wrap(
            "Correct: add_zero_attn. The hint route differs from the mask alone (its "
            "causal mask hides the extra key), the need_weights=True route agrees with "
            "it, and the module has no bias_k: the extra key is the zero key."
        )
    )
    return True


COMMON_MISTAKES = {
    "check_predict_routes": lambda: (True, True, False, True),
    "check_name_the_option": lambda: "add_bias_kv",
}
