"""Weight-only block quantization in ONNX Runtime's MatMulNBits layout (com.microsoft).

A weight W (N=out, K=in) is cut into blocks of `block_size` along K; each block gets its
own scale and zero point (asymmetric, unsigned):
    q = clamp(round(w / scale) + zp, 0, 2^bits - 1),   w ≈ (q - zp) · scale
MatMulNBits reads B as (N, K/block, block·bits/8) uint8, i.e. the torch (out, in) row
order, so the stored tensor is exactly what the kernel consumes (no transpose at load).
A shared weight is quantized once and its three tensors are consumed by every layer of
its group."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BITS = {"int8": 8, "int4": 4}


@dataclass
class QuantizedWeight:
    packed: np.ndarray  # (N, n_blocks, block_size*bits/8) uint8
    scales: np.ndarray  # (N * n_blocks,) float32, or float16 for fp16 activations
    zero_points: np.ndarray  # (N * ceil(n_blocks*bits/8),) uint8
    bits: int
    block_size: int
    n: int
    k: int

    def dequantize(self) -> np.ndarray:
        """(N, K) float32: what the kernel computes with (the reference for parity)."""
        q = _unpack(self.packed, self.bits).astype(np.float32)  # (N, nb, bs)
        nb = q.shape[1]
        zp = _unpack_zp(self.zero_points, self.bits, self.n, nb).astype(np.float32)  # (N, nb)
        w = (q - zp[..., None]) * self.scales.astype(np.float32).reshape(self.n, nb)[..., None]
        return w.reshape(self.n, -1)[:, : self.k]


def quantize_blockwise(w: np.ndarray, bits: int, block_size: int) -> QuantizedWeight:
    """Quantize w (N, K) float → MatMulNBits tensors. K is zero-padded to a whole block."""
    n, k = w.shape
    nb = -(-k // block_size)
    wp = np.zeros((n, nb * block_size), np.float32)
    wp[:, :k] = w
    blocks = wp.reshape(n, nb, block_size)
    qmax = (1 << bits) - 1
    # the range always contains 0 so a zero weight stays exactly zero
    lo = np.minimum(blocks.min(axis=2), 0.0)
    hi = np.maximum(blocks.max(axis=2), 0.0)
    scale = (hi - lo) / qmax
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)  # all-zero block
    zp = np.clip(np.round(-lo / scale), 0, qmax).astype(np.uint8)  # (N, nb)
    q = np.clip(np.round(blocks / scale[..., None]) + zp[..., None], 0, qmax).astype(np.uint8)
    return QuantizedWeight(_pack(q, bits), scale.reshape(-1), _pack_zp(zp, bits), bits, block_size, n, k)


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return q
    # two 4-bit values a byte: element 2j in the low nibble, 2j+1 in the high nibble
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _unpack(p: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return p
    out = np.empty(p.shape[:-1] + (p.shape[-1] * 2,), np.uint8)
    out[..., 0::2] = p & 0x0F
    out[..., 1::2] = p >> 4
    return out


def _pack_zp(zp: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return zp.reshape(-1)
    n, nb = zp.shape
    if nb % 2:  # each row's zero points start on a byte boundary
        zp = np.concatenate([zp, np.zeros((n, 1), np.uint8)], axis=1)
    return _pack(zp, 4).reshape(-1)


def _unpack_zp(zp: np.ndarray, bits: int, n: int, nb: int) -> np.ndarray:
    if bits == 8:
        return zp.reshape(n, nb)
    return _unpack(zp.reshape(n, -1), 4)[:, :nb]
