"""The model zoo: small PyTorch classifiers by name, plus user models as ``module:factory``.

Every model maps a batch ``(batch, *input_shape)`` of float32 features to logits
``(batch, n_classes)``:

``logreg``
    flatten, then one linear layer (multinomial logistic regression). No keyword arguments.
``mlp``
    flatten, then ``Linear → ReLU`` for each width in ``hidden`` (default ``(128,)``), then a
    linear output layer. ``dropout`` (default ``0.0``) adds dropout after each hidden layer.
``cnn``
    a small convolutional net for image-like input: two ``3×3`` convolutions with padding
    (``channels``, default ``(16, 32)``) each followed by ReLU, a ``2×2`` max pool when the image
    is at least ``2×2``, then flatten and a linear output layer. The input may be ``(C, H, W)``,
    ``(H, W)`` (one channel), or flat ``(N,)``: a flat input is reshaped to ``image_shape``
    (``(H, W)`` or ``(C, H, W)``) when given, else to a one-channel square when ``N`` is a perfect
    square (scikit-learn digits: 64 features → ``1×8×8``).
``module:factory``
    a user model: ``factory(input_shape=..., n_classes=..., **kwargs)`` must return a
    :class:`torch.nn.Module`. This module never imports user code: the caller passes the
    factory, which :mod:`flows.code` resolves only when the caller trusts it (a code
    artifact's CID, or a local module the caller named); the module's source, or the code
    artifact's CID, belongs in the cache key (see :func:`model_modules`).

Parameters are initialised from ``seed`` in a forked RNG, so building the same spec twice gives
identical weights and the global torch RNG is left untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

import torch
from torch import nn

from flows.errors import ModelSpecError, UntrustedCodeError

__all__ = ["ZOO", "build_model", "model_modules"]

ZOO: Final[tuple[str, ...]] = ("logreg", "mlp", "cnn")


def build_model(
    spec: str,
    *,
    input_shape: tuple[int, ...],
    n_classes: int,
    seed: int = 0,
    factory: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The model named by ``spec`` for samples of ``input_shape`` and ``n_classes`` classes.

    ``seed`` fixes the initial weights (it is not passed on to a user factory). A user model
    ``module:factory`` is built by ``factory``, the callable the caller resolved (and trusted,
    see :func:`flows.code.build_model`); without it, :class:`UntrustedCodeError`: nothing is
    ever imported here. Raises :class:`ModelSpecError` for an unknown name, bad keyword
    arguments, or a user factory that raises or returns something other than an ``nn.Module``.
    """
    shape = _check_shape(input_shape)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ModelSpecError(f"n_classes must be a positive integer, got {n_classes!r}")
    builder: Callable[[], nn.Module]
    if ":" in spec:
        _split_spec(spec)
        if factory is None:
            raise UntrustedCodeError(
                f"model factory {spec!r}: flows.zoo builds user models only from a factory the "
                f"caller resolved (flows.code.build_model with a trust policy; --trust-code "
                f"{spec} on the command line)",
                spec,
            )
        user_factory = factory

        def builder() -> nn.Module:
            return _call_factory(spec, user_factory, shape, n_classes, kwargs)

    elif spec == "logreg":

        def builder() -> nn.Module:
            return _logreg(spec, shape, n_classes, **kwargs)

    elif spec == "mlp":

        def builder() -> nn.Module:
            return _mlp(spec, shape, n_classes, **kwargs)

    elif spec == "cnn":

        def builder() -> nn.Module:
            return _cnn(spec, shape, n_classes, **kwargs)

    else:
        raise ModelSpecError(
            f"unknown model {spec!r}: use one of {', '.join(ZOO)} or a user model as "
            "'module:factory'"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder()


def model_modules(spec: str) -> list[str]:
    """Names of the modules whose source must be part of a cache key for ``spec``.

    ``[]`` for a zoo model (its code is cidflow's own), ``[module]`` for ``module:factory``.
    """
    if ":" in spec:
        module, _ = _split_spec(spec)
        return [module]
    if spec in ZOO:
        return []
    raise ModelSpecError(
        f"unknown model {spec!r}: use one of {', '.join(ZOO)} or a user model as 'module:factory'"
    )


# -- zoo models --------------------------------------------------------------------------------


def _logreg(spec: str, shape: tuple[int, ...], n_classes: int, **kwargs: Any) -> nn.Module:
    _no_extra(spec, kwargs)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), n_classes))


def _mlp(
    spec: str,
    shape: tuple[int, ...],
    n_classes: int,
    *,
    hidden: Any = (128,),
    dropout: float = 0.0,
    **kwargs: Any,
) -> nn.Module:
    _no_extra(spec, kwargs)
    widths = _positive_ints(spec, "hidden", hidden, allow_empty=True)
    if not isinstance(dropout, int | float) or not 0.0 <= float(dropout) < 1.0:
        raise ModelSpecError(f"{spec}: dropout must be in [0, 1), got {dropout!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(shape)
    for w in widths:
        layers += [nn.Linear(width, w), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(float(dropout)))
        width = w
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def _cnn(
    spec: str,
    shape: tuple[int, ...],
    n_classes: int,
    *,
    channels: Any = (16, 32),
    image_shape: Any = None,
    **kwargs: Any,
) -> nn.Module:
    _no_extra(spec, kwargs)
    widths = _positive_ints(spec, "channels", channels, allow_empty=False)
    layers: list[nn.Module] = []
    image: tuple[int, ...]
    if len(shape) == 1:
        if image_shape is not None:
            image = tuple(_positive_ints(spec, "image_shape", image_shape, allow_empty=False))
            if len(image) not in (2, 3) or math.prod(image) != shape[0]:
                raise ModelSpecError(
                    f"{spec}: image_shape {image} must be (H, W) or (C, H, W) with "
                    f"{shape[0]} elements, the size of the input"
                )
        else:
            side = math.isqrt(shape[0])
            if side * side != shape[0]:
                raise ModelSpecError(
                    f"{spec}: input of {shape[0]} features is not a square image; "
                    "pass image_shape=(H, W) or (C, H, W)"
                )
            image = (side, side)
        if len(image) == 2:
            image = (1, *image)
        layers.append(nn.Unflatten(1, image))
    elif len(shape) == 2:
        image = (1, *shape)
        layers.append(nn.Unflatten(1, (1, shape[0])))  # (B, H, W) → (B, 1, H, W)
    elif len(shape) == 3:
        image = shape
    else:
        raise ModelSpecError(
            f"{spec}: input shape {shape} is not an image: expected (C, H, W), (H, W) or flat"
        )
    c, h, w = image
    for out in widths:
        layers += [nn.Conv2d(c, out, kernel_size=3, padding=1), nn.ReLU()]
        c = out
    if h >= 2 and w >= 2:
        layers.append(nn.MaxPool2d(2))
        h, w = h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, n_classes)]
    return nn.Sequential(*layers)


# -- user models -------------------------------------------------------------------------------


def _split_spec(spec: str) -> tuple[str, str]:
    module, _, attr = spec.partition(":")
    if not module or not attr or ":" in attr:
        raise ModelSpecError(f"bad user model {spec!r}: expected 'module:factory'")
    return module, attr


def _call_factory(
    spec: str,
    factory: Callable[..., Any],
    shape: tuple[int, ...],
    n_classes: int,
    kwargs: dict[str, Any],
) -> nn.Module:
    try:
        model = factory(input_shape=shape, n_classes=n_classes, **kwargs)
    except Exception as exc:
        raise ModelSpecError(f"model factory {spec!r} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


# -- validation --------------------------------------------------------------------------------


def _check_shape(input_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if not shape or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        raise ModelSpecError(
            f"input_shape must be a non-empty tuple of positive integers (one sample, no batch "
            f"dimension), got {input_shape!r}"
        )
    return shape


def _positive_ints(spec: str, name: str, value: Any, *, allow_empty: bool) -> list[int]:
    items = [value] if isinstance(value, int) else value
    try:
        out = list(items)
    except TypeError:
        out = []
        allow_empty = False
    if (not out and not allow_empty) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in out
    ):
        raise ModelSpecError(f"{spec}: {name} must be positive integers, got {value!r}")
    return out


def _no_extra(spec: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise ModelSpecError(f"{spec}: unexpected keyword arguments {sorted(kwargs)}")
