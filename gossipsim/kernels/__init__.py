"""Numerics on (N, P) tensors: compressors with exact bit counts, and the fused ops algorithms call
(pure torch everywhere, Triton on CUDA, one dispatch point: `kernels.backend`)."""
from .compressors import (
    QSGD,
    Chain,
    Compressor,
    Dense,
    Identity,
    Quantized,
    RandK,
    Sign,
    Sparse,
    TopK,
    dithered,
    identity,
    parse,
    qsgd,
    rand_k,
    sign,
    top_k,
    top_k_qsgd,
)
from .ops import KERNELS, backend, choco_residual, consensus_step, roundtrip

__all__ = ["KERNELS", "QSGD", "Chain", "Compressor", "Dense", "Identity", "Quantized", "RandK", "Sign", "Sparse",
           "TopK", "backend", "choco_residual", "consensus_step", "dithered", "identity", "parse", "qsgd", "rand_k",
           "roundtrip", "sign", "top_k", "top_k_qsgd"]
