"""Seeded Rademacher random projection of gradients to ``dim`` dimensions.

The matrix R has entries ±1/sqrt(dim). It is defined by (seed, input_dim, dim) alone and is
generated block by block of input rows (each block from its own seeded stream), so memory stays
bounded and it is never saved. Cosines between projected vectors approximate cosines between the
original gradients (Johnson–Lindenstrauss).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from curator.config import ProjectionConfig

BLOCK_ROWS = 4096  # part of the projection's definition: changing it changes R


def _block(seed: int, block: int, rows: int, dim: int) -> torch.Tensor:
    """Rows [block*BLOCK_ROWS, +rows) of the ±1 matrix (unscaled), as float32."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, dim, block])))
    nbytes = (rows * dim + 7) // 8
    bits = np.unpackbits(np.frombuffer(rng.bytes(nbytes), dtype=np.uint8), count=rows * dim)
    return torch.from_numpy(bits.reshape(rows, dim)).to(torch.float32).mul_(2.0).sub_(1.0)


class Projector:
    """Projects [n, input_dim] gradients to [n, dim]; deterministic for a given config and input_dim."""

    def __init__(self, config: ProjectionConfig, input_dim: int, cache_bytes: int = 512 * 2**20) -> None:
        self.config = config
        self.input_dim = input_dim
        self.scale = 1.0 / math.sqrt(config.dim)
        self.n_blocks = math.ceil(input_dim / BLOCK_ROWS)
        # Small matrices (tiny models) are kept in memory; large ones are regenerated per call.
        self._cache: list[torch.Tensor] | None = [] if input_dim * config.dim * 4 <= cache_bytes else None

    def _rows(self, b: int) -> torch.Tensor:
        if self._cache is not None and b < len(self._cache):
            return self._cache[b]
        rows = min(BLOCK_ROWS, self.input_dim - b * BLOCK_ROWS)
        block = _block(self.config.seed, b, rows, self.config.dim)
        if self._cache is not None:
            self._cache.append(block)
        return block

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        """[n, input_dim] float → [n, dim] float32 (not normalised)."""
        if grads.shape[-1] != self.input_dim:
            raise ValueError(f"expected gradients of width {self.input_dim}, got {grads.shape[-1]}")
        g = grads.to(torch.float32)
        out = torch.zeros(g.shape[0], self.config.dim, dtype=torch.float32)
        for b in range(self.n_blocks):
            lo = b * BLOCK_ROWS
            block = self._rows(b)
            out.addmm_(g[:, lo : lo + block.shape[0]], block)
        return out.mul_(self.scale)

    def matrix(self) -> torch.Tensor:
        """The full scaled matrix (for tests on small inputs only)."""
        return torch.cat([self._rows(b) for b in range(self.n_blocks)], dim=0) * self.scale


def normalize(x: torch.Tensor | np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """L2-normalise rows; an all-zero row stays zero."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    arr = arr.astype(np.float32, copy=False)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, eps)
