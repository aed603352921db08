"""PyTorch state_dicts <-> numpy arrays, losslessly, for every dtype.

Dtypes numpy lacks (bfloat16, the float8 family, ...) travel as unsigned integers of the same
width, with the torch dtype name recorded beside them; the round trip is bit-exact. torch is
imported only when one of these functions runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from artifacts.errors import UnsupportedInputError

if TYPE_CHECKING:
    import torch

__all__ = ["numpy_to_tensor", "tensor_to_numpy", "torch_dtype_name"]

_UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_INT_OF_SIZE_NAME = {1: "int8", 2: "int16", 4: "int32", 8: "int64"}


def torch_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tensor_to_numpy(name: str, tensor: Any) -> tuple[np.ndarray[Any, Any], str]:
    """A C-contiguous numpy copy of ``tensor`` and the torch dtype name to restore it."""
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise UnsupportedInputError(
            f"state_dict[{name!r}] is a {type(tensor).__name__}, not a tensor"
        )
    if tensor.layout != torch.strided or tensor.is_quantized:
        raise UnsupportedInputError(f"state_dict[{name!r}]: only dense tensors are supported")
    t = tensor.detach().to("cpu").contiguous()
    dtype_name = torch_dtype_name(t.dtype)
    try:
        array = t.numpy()
    except TypeError:
        size = t.element_size()
        if size not in _UINT_OF_SIZE:
            raise UnsupportedInputError(
                f"state_dict[{name!r}]: dtype {dtype_name} unsupported"
            ) from None
        int_dtype = getattr(torch, _INT_OF_SIZE_NAME[size])
        array = t.view(int_dtype).numpy().view(_UINT_OF_SIZE[size])
    return np.array(array, order="C", copy=not array.flags.c_contiguous), dtype_name


def numpy_to_tensor(array: np.ndarray[Any, Any], dtype_name: str) -> torch.Tensor:
    """The tensor :func:`tensor_to_numpy` was given (same dtype, bits and shape)."""
    import torch

    target = getattr(torch, dtype_name, None)
    if not isinstance(target, torch.dtype):
        raise UnsupportedInputError(f"unknown torch dtype {dtype_name!r}")
    tensor = torch.from_numpy(np.array(array, order="C", copy=True))
    if tensor.dtype == target:
        return tensor
    if tensor.element_size() != target.itemsize:
        raise UnsupportedInputError(f"cannot restore {dtype_name} from {array.dtype}")
    return tensor.view(target)
