"""Flower ``Array`` <-> NumPy without Flower's extra copies (shared by sites and server).

Flower's ``Array(ndarray)`` saves into a BytesIO and copies it out; ``Array.numpy()`` copies
the bytes into a new array. These read and write the same ``.npy`` payload with one copy (or
none, for reading), and keep 0-d arrays 0-d (``np.ascontiguousarray`` would make them 1-d).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType

__all__ = ["array_from_numpy", "array_view", "tensor_views"]


def array_view(array: Array) -> np.ndarray:
    """A read-only NumPy view of an :class:`~flwr.app.Array`'s bytes (no copy).

    Falls back to ``array.numpy()`` (a copy) for anything but a C-ordered ``.npy`` payload.
    """
    data = array.data
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read_header(buffer)
    except ValueError:
        return array.numpy()
    if fortran_order or dtype.hasobject:
        return array.numpy()
    count = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(data, dtype=dtype, count=count, offset=buffer.tell()).reshape(shape)


def array_from_numpy(value: np.ndarray) -> Array:
    """``Array(value)`` with one copy of the data instead of Flower's two (``np.save`` into a
    BytesIO, then ``getvalue``); the bytes are the same ``.npy`` payload."""
    if not value.flags.c_contiguous:
        value = value.copy(order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(value))
    data = b"".join([header.getvalue(), value.reshape(-1).view(np.uint8)])
    return Array(dtype=str(value.dtype), shape=tuple(value.shape), stype=SType.NUMPY, data=data)


def tensor_views(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """The record's arrays as tensors that read the message's bytes in place (read-only: a
    model's ``load_state_dict`` and ``torch.save`` copy them), instead of
    ``ArrayRecord.to_torch_state_dict``'s copies."""
    state = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for key, array in record.items():
            state[key] = torch.from_numpy(array_view(array))
    return state
