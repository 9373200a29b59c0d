"""Named views into one flat parameter vector."""

from __future__ import annotations

import math

import torch


class ParamLayout:
    """Maps names to (offset, shape) so a flat θ unflattens into views with no copy."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.shapes = dict(shapes)
        self.offsets: dict[str, int] = {}
        offset = 0
        for name, shape in self.shapes.items():
            self.offsets[name] = offset
            offset += math.prod(shape)
        self.n_params = offset

    def split(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of the last axis of ``theta`` ``[..., n]`` as ``[..., *shape]``, by one
        ``split`` (whose backward is one concatenation, where a slice per layer would
        zero-fill a gradient of θ's size each)."""
        sizes = [math.prod(shape) for shape in self.shapes.values()]
        return {name: part.unflatten(-1, shape) for (name, shape), part
                in zip(self.shapes.items(), theta.split(sizes, dim=-1))}

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            name: flat[o:o + math.prod(shape)].view(shape)
            for (name, shape), o in zip(self.shapes.items(), self.offsets.values())
        }
