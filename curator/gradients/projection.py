"""Seeded random projections of per-example gradients to ``dim`` dimensions.

Two kinds, both defined by their config (kind, seed, dim, nonzeros) alone and never saved:

- ``sparse`` (the default): a sparse Johnson–Lindenstrauss matrix in the Kane–Nelson block
  form. The output is cut into ``nonzeros`` equal blocks; every input coordinate lands once in
  each block, at a seeded position, with a seeded sign and weight ±1/sqrt(nonzeros). Projecting
  an [n, D] gradient costs n·D·nonzeros additions instead of a dense n·D·dim product, and the
  matrix is ``nonzeros`` integers per input coordinate, small enough to keep.
- ``rademacher``: the dense ±1/sqrt(dim) matrix, generated block by block of input rows (each
  block from its own seeded stream), so memory stays bounded. Kept for stores built with it and
  as the baseline of ``benchmarks/projection.py``.

Cosines between projected vectors approximate cosines between the original gradients (JL).
Each input block is drawn from its own ``SeedSequence`` stream, so coordinate i is projected
the same way whatever the input width, and an example's vector does not depend on the other
examples in its batch.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

from curator.config import ProjectionConfig

BLOCK_ROWS = 4096  # part of both projections' definition: changing it changes the matrix
_SPARSE_STREAM = 1  # separates the sparse kind's random streams from the dense kind's


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(key))))


def _dense_block(seed: int, block: int, rows: int, dim: int) -> torch.Tensor:
    """Rows [block*BLOCK_ROWS, +rows) of the ±1 matrix (unscaled), as float32."""
    rng = _rng(seed, dim, block)
    nbytes = (rows * dim + 7) // 8
    bits = np.unpackbits(np.frombuffer(rng.bytes(nbytes), dtype=np.uint8), count=rows * dim)
    return torch.from_numpy(bits.reshape(rows, dim)).to(torch.float32).mul_(2.0).sub_(1.0)


class RademacherProjector:
    """Dense ±1/sqrt(dim) projection of [n, input_dim] gradients to [n, dim]."""

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
        block = _dense_block(self.config.seed, b, rows, self.config.dim)
        if self._cache is not None:
            self._cache.append(block)
        return block

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        """[n, input_dim] float → [n, dim] float32 (not normalised)."""
        g = _check(grads, self.input_dim)
        out = torch.zeros(g.shape[0], self.config.dim, dtype=torch.float32, device=g.device)
        for b in range(self.n_blocks):
            lo = b * BLOCK_ROWS
            block = self._rows(b).to(g.device)
            out.addmm_(g[:, lo : lo + block.shape[0]], block)
        return out.mul_(self.scale)

    def matrix(self) -> torch.Tensor:
        """The full scaled matrix [input_dim, dim] (for tests on small inputs only)."""
        return torch.cat([self._rows(b) for b in range(self.n_blocks)], dim=0) * self.scale


def sparse_block_bounds(dim: int, nonzeros: int) -> list[int]:
    """Where each of the ``nonzeros`` output blocks starts (and the last one ends)."""
    return [j * dim // nonzeros for j in range(nonzeros + 1)]


class SparseProjector:
    """Sparse JL projection: each input coordinate adds ±x/sqrt(s) to one position per output block."""

    def __init__(self, config: ProjectionConfig, input_dim: int) -> None:
        self.config = config
        self.input_dim = input_dim
        s = config.nonzeros
        bounds = sparse_block_bounds(config.dim, s)
        positions = np.empty((s, input_dim), dtype=np.int64)
        signs = np.empty((s, input_dim), dtype=np.float32)
        for b in range(math.ceil(input_dim / BLOCK_ROWS)):
            lo, hi = b * BLOCK_ROWS, min((b + 1) * BLOCK_ROWS, input_dim)
            rng = _rng(config.seed, config.dim, s, b, _SPARSE_STREAM)
            for j in range(s):  # whole blocks are drawn, then cut: the input width does not change them
                positions[j, lo:hi] = rng.integers(bounds[j], bounds[j + 1], BLOCK_ROWS)[: hi - lo]
            signs[:, lo:hi] = (rng.integers(0, 2, (s, BLOCK_ROWS)) * 2.0 - 1.0)[:, : hi - lo]
        self.positions = torch.from_numpy(positions)
        self.weights = torch.from_numpy(signs / np.float32(math.sqrt(s)))

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        """[n, input_dim] float → [n, dim] float32 (not normalised); each row independently."""
        g = _check(grads, self.input_dim)
        if self.positions.device != g.device:  # the matrix moves once to where the gradients are
            self.positions, self.weights = self.positions.to(g.device), self.weights.to(g.device)
        out = torch.zeros(g.shape[0], self.config.dim, dtype=torch.float32, device=g.device)
        for j in range(self.config.nonzeros):
            out.index_add_(1, self.positions[j], g * self.weights[j])
        return out

    def matrix(self) -> torch.Tensor:
        """The full matrix [input_dim, dim] (for tests on small inputs only)."""
        m = torch.zeros(self.input_dim, self.config.dim, dtype=torch.float32, device=self.positions.device)
        rows = torch.arange(self.input_dim, device=self.positions.device)
        for j in range(self.config.nonzeros):
            m[rows, self.positions[j]] += self.weights[j]
        return m


AnyProjector = Union[RademacherProjector, SparseProjector]


def Projector(config: ProjectionConfig, input_dim: int) -> AnyProjector:  # noqa: N802 (a factory named like the type it returns)
    """The projector ``config.kind`` names, for gradients of width ``input_dim``."""
    if config.kind == "rademacher":
        return RademacherProjector(config, input_dim)
    return SparseProjector(config, input_dim)


def _check(grads: torch.Tensor, width: int) -> torch.Tensor:
    if grads.shape[-1] != width:
        raise ValueError(f"expected gradients of width {width}, got {grads.shape[-1]}")
    return grads.to(torch.float32)


def normalize(x: torch.Tensor | np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """L2-normalise rows; an all-zero row stays zero."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    arr = arr.astype(np.float32, copy=False)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, eps)
