"""Weight-only block quantization in ONNX Runtime's MatMulNBits layout (com.microsoft).

A weight W (N=out, K=in) is cut into blocks of `block_size` along K; each block gets its
own scale and zero point (unsigned codes):
    q = clamp(round(w / scale) + zp, 0, 2^bits - 1),   w ≈ (q - zp) · scale
Asymmetric blocks store an integer zero point each; symmetric blocks store none and use
MatMulNBits' default 2^(bits-1) (the kernel then skips the zero-point reads).

Float zero points (llama.cpp's Q4_1 form, w = d·q + m per block) hold a block exactly that an
integer zero point re-rounds, but MatMulNBits runs them an order of magnitude slower at one token
(bench/results/zero_points.md). So they are stored as symmetric codes plus a per-block offset:
    w = (q - 2^(bits-1))·scale + c,   c = scale·(2^(bits-1) - zp)      (N, blocks)
and x·Wᵀ = MatMulNBits(x) + S(x)·Cᵀ, where S(x) (..., blocks) sums x over each block and the
offset table C (N, blocks) is itself an 8-bit symmetric MatMulNBits weight (`offsets`): a Q4_1
block comes back to within half a step of its row's table.
MatMulNBits reads B as (N, K/block, block·bits/8) uint8, i.e. the torch (out, in) row
order, so the stored tensor is exactly what the kernel consumes (no transpose at load).
A shared weight is quantized once and its three tensors are consumed by every layer of
its group."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

BITS = {"int8": 8, "int4": 4}


@dataclass
class QuantizedWeight:
    packed: np.ndarray  # (N, n_blocks, block_size*bits/8) uint8
    scales: np.ndarray  # (N * n_blocks,) float32, or float16 for fp16 activations
    zero_points: np.ndarray | None  # (N * ceil(n_blocks*bits/8),) uint8; None: symmetric (2^(bits-1))
    bits: int
    block_size: int
    n: int
    k: int
    offsets: "QuantizedWeight | None" = None  # float zero points: the (N, n_blocks) offset table C, 8-bit

    def dequantize(self) -> np.ndarray:
        """(N, K) float32: what the kernel computes with (the reference for parity)."""
        q = _unpack(self.packed, self.bits).astype(np.float32)  # (N, nb, bs)
        nb = q.shape[1]
        zp = (np.full((self.n, nb), 1 << (self.bits - 1), np.float32) if self.zero_points is None
              else _unpack_zp(self.zero_points, self.bits, self.n, nb).astype(np.float32))  # (N, nb)
        w = (q - zp[..., None]) * self.scales.astype(np.float32).reshape(self.n, nb)[..., None]
        if self.offsets is not None:
            w += self.offsets.dequantize()[..., None]  # (N, nb): one offset a block
        return w.reshape(self.n, -1)[:, : self.k]


def pad_blocks(w: np.ndarray, block_size: int) -> np.ndarray:
    """w (N, K) -> (N, nb, block_size) float32, K zero-padded to a whole block (as the kernel pads)."""
    n, k = w.shape
    nb = -(-k // block_size)
    wp = np.zeros((n, nb * block_size), np.float32)
    wp[:, :k] = w
    return wp.reshape(n, nb, block_size)


def minmax_params(blocks: np.ndarray, bits: int, symmetric: bool = False,
                  float_zp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest parameters of (N, nb, bs) blocks: scale (N, nb) float32 and integer
    zero point (N, nb) uint8 from each block's min/max. The range always contains 0, so a
    zero weight stays exactly zero (and K padding costs nothing). float_zp: the block's own
    [min, max] (0 need not be in it; Q4_1's d = (max - min)/qmax, m = min) and the zero point
    −min/scale unrounded, float32 (N, nb): a Q4_1 block comes back exactly. Symmetric: the zero point
    is 2^(bits-1) = mid and the codes span (q - mid)·scale in [-mid, mid-1]·scale, so the
    scale is the smallest that holds both the block's min and its max."""
    qmax = (1 << bits) - 1
    if float_zp:
        lo, hi = blocks.min(axis=2), blocks.max(axis=2)
        scale = (hi - lo) / qmax
        scale = np.where(scale == 0, np.where(lo == 0, 1.0, np.abs(lo)), scale).astype(np.float32)  # a constant block
        return scale, (-lo / scale).astype(np.float32)
    lo = np.minimum(blocks.min(axis=2), 0.0)
    hi = np.maximum(blocks.max(axis=2), 0.0)
    if symmetric:
        mid = 1 << (bits - 1)
        scale = np.maximum(hi / (mid - 1), -lo / mid)
        scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
        return scale, np.full(scale.shape, mid, np.uint8)
    scale = (hi - lo) / qmax
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)  # all-zero block
    zp = np.clip(np.round(-lo / scale), 0, qmax).astype(np.uint8)
    return scale, zp


def from_codes(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, bits: int, block_size: int, k: int) -> QuantizedWeight:
    """MatMulNBits tensors from integer codes q (N, nb, bs) in [0, 2^bits), scale (N, nb)
    and zero points zp (N, nb), or None for symmetric codes; k = the unpadded K. A float
    zp becomes symmetric codes plus the offset table (the module docstring)."""
    n = q.shape[0]
    scale = np.ascontiguousarray(scale, np.float32)
    float_zp = zp is not None and np.issubdtype(zp.dtype, np.floating)
    stored_zp = None if zp is None or float_zp else _pack_zp(zp.astype(np.uint8), bits)
    out = QuantizedWeight(_pack(q.astype(np.uint8), bits), scale.reshape(-1), stored_zp, bits, block_size, n, k)
    if float_zp:
        c = scale * ((1 << (bits - 1)) - zp.astype(np.float32))  # (N, nb)
        out.offsets = quantize_blockwise(c, 8, offset_block(c.shape[1]), symmetric=True)
    return out


def offset_block(n_blocks: int) -> int:
    """Block size of the offset table's 8-bit codes along its K = n_blocks: one block (one
    scale per output row) up to 256 blocks, MatMulNBits' largest block."""
    return min(256, max(16, 1 << (n_blocks - 1).bit_length()))


def quantize_blockwise(w: np.ndarray, bits: int, block_size: int, symmetric: bool = False,
                       float_zp: bool = False) -> QuantizedWeight:
    """Round to nearest (RTN): quantize w (N, K) float → MatMulNBits tensors, each block's
    scale and zero point from its min/max. K is zero-padded to a whole block."""
    blocks = pad_blocks(w, block_size)
    scale, zp = minmax_params(blocks, bits, symmetric, float_zp)
    qmax = (1 << bits) - 1
    if float_zp:
        q = np.clip(np.round(blocks / scale[..., None] + zp[..., None]), 0, qmax).astype(np.uint8)
    else:
        q = np.clip(np.round(blocks / scale[..., None]) + zp[..., None], 0, qmax).astype(np.uint8)
    return from_codes(q, scale, None if symmetric else zp, bits, block_size, w.shape[1])


def concat_rows(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """The row-concatenation (along N) of weights quantized alike: what quantizing the
    concatenated weight gives, since every row and block is quantized on its own."""
    first = parts[0]
    if len(parts) == 1:
        return replace(first)
    if any((p.bits, p.block_size, p.k, p.zero_points is None, p.offsets) != (first.bits, first.block_size, first.k,
                                                                            first.zero_points is None, None) for p in parts):
        raise ValueError("only weights of one form (bits, block, K, zero points, no offsets) concatenate")
    zp = None
    if first.zero_points is not None:  # per row: ceil(nb·bits/8) bytes, so rows concatenate as bytes do
        nb = first.packed.shape[1]
        zp = _pack_zp(np.concatenate([_unpack_zp(p.zero_points, p.bits, p.n, nb) for p in parts]), first.bits)
    return replace(first, packed=np.concatenate([p.packed for p in parts]),
                               scales=np.concatenate([np.asarray(p.scales).reshape(-1) for p in parts]),
                               zero_points=zp, n=sum(p.n for p in parts))


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
