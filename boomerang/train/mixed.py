"""The mixed-context term: train the student inside random family members, as patching will use it.

A boomerang member of size between the student and the teacher runs some student layers among teacher blocks. The
main loss only trains the student as a whole; this term also runs, for each micro-batch, one member drawn at random
and adds its CE and KL(teacher ‖ member) to the loss. Two draws (``loss.mixed_draw``):

- ``count``: a number K uniform in 1..M−1, then K student layers patched with their teacher blocks. Members with
  one student layer left are 1 draw in M−1, so a layer that stands alone among teacher layers is rarely trained so.
- ``size``: a layer count uniform over the family's sizes strictly between the student's and the teacher's, then
  a set of multi-layer blocks of that size uniformly; single-layer blocks (which change no size) are patched each
  with probability 1/2. Every intermediate size is trained as often, the sizes just below the teacher included.

The member is assembled from the models' own tensors (``core.patching``), so its student layers are the trained
parameters and its teacher blocks stay frozen; its gradients reach exactly the student layers (and embedding or
head) it uses. Draws are seeded by the run's seed and the step, so a resumed run draws the same members.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..core.layermap import LayerMap
from ..core.patching import assemble
from ..core.plan import PatchPlan

Draw = Literal["count", "size"]


class MixedContext:
    """Draws family members of a teacher and a (trained) student and assembles them, sharing their tensors."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        layer_map: LayerMap,
        *,
        seed: int = 0,
        draw: Draw = "count",
    ):
        self.teacher, self.student, self.layer_map = teacher, student, layer_map
        self.seed, self.draw_by = seed, draw
        self._ways = _subset_counts([len(b) - 1 for b in layer_map.blocks if len(b) > 1])

    def draw(self, step: int, micro: int = 0) -> PatchPlan:
        """The member for one micro-batch (see the module docstring for the two draws)."""
        m = self.layer_map.n_student
        g = torch.Generator().manual_seed(hash((self.seed, step, micro)) & 0x7FFF_FFFF_FFFF_FFFF)
        sizes = [extra for extra in range(1, len(self._ways[0]) - 1) if self._ways[0][extra]]
        if self.draw_by == "size" and sizes:
            patched = self._draw_size(sizes[int(torch.randint(len(sizes), (1,), generator=g))], g)
        else:
            k = int(torch.randint(1, max(m, 2), (1,), generator=g)) if m > 1 else 0
            patched = torch.randperm(m, generator=g)[:k].tolist()
        return PatchPlan(layer_map=self.layer_map, patched=sorted(patched), order="mixed")

    def _draw_size(self, extra: int, g: torch.Generator) -> list[int]:
        """Student layers to patch so that the member has ``extra`` layers more than the student: a uniform subset
        of the multi-layer blocks adding exactly that many, and each single-layer block with probability 1/2."""
        multi = [i for i, b in enumerate(self.layer_map.blocks) if len(b) > 1]
        single = [i for i, b in enumerate(self.layer_map.blocks) if len(b) == 1]
        patched, left = [], extra
        # take block i with probability ways(blocks after it, left − its extra) / ways(it and after, left)
        for j, i in enumerate(multi):
            cost = len(self.layer_map.blocks[i]) - 1
            take = self._ways[j + 1][left - cost] if left >= cost else 0
            if take and float(torch.rand((), generator=g)) * self._ways[j][left] < take:
                patched.append(i)
                left -= cost
        coins = torch.rand(len(single), generator=g).tolist()
        return patched + [i for i, c in zip(single, coins, strict=True) if c < 0.5]

    def member(self, plan: PatchPlan) -> nn.Module:
        """The member ``plan`` describes, holding the teacher's and the student's very parameters."""
        return assemble(
            {"teacher": self.teacher, "student": self.student},  # type: ignore[dict-item]
            plan.sources,
            plan.embed_source,
            plan.head_source,
            section=None,
        )


def _subset_counts(costs: list[int]) -> list[list[int]]:
    """``ways[j][s]``: how many subsets of ``costs[j:]`` sum to ``s`` (s from 0 to the sum of all costs)."""
    total = sum(costs)
    ways = [[0] * (total + 1) for _ in range(len(costs) + 1)]
    ways[len(costs)][0] = 1
    for j in range(len(costs) - 1, -1, -1):
        for s in range(total + 1):
            ways[j][s] = ways[j + 1][s] + (ways[j + 1][s - costs[j]] if s >= costs[j] else 0)
    return ways
