"""The mixed-context term: train the student inside random family members, as patching will use it.

A boomerang member of size between the student and the teacher runs some student layers among teacher blocks. The
main loss only trains the student as a whole; this term also runs, for each micro-batch, one member drawn at random
(a size K uniform in 1..M−1, then K student layers patched with their teacher blocks) and adds its CE and
KL(teacher ‖ member) to the loss. The member is assembled from the models' own tensors (``core.patching``), so its
student layers are the trained parameters and its teacher blocks stay frozen; its gradients reach exactly the
student layers (and embedding or head) it uses. Draws are seeded by the run's seed and the step, so a resumed run
draws the same members.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.layermap import LayerMap
from ..core.patching import assemble
from ..core.plan import PatchPlan


class MixedContext:
    """Draws family members of a teacher and a (trained) student and assembles them, sharing their tensors."""

    def __init__(self, teacher: nn.Module, student: nn.Module, layer_map: LayerMap, *, seed: int = 0):
        self.teacher, self.student, self.layer_map, self.seed = teacher, student, layer_map, seed

    def draw(self, step: int, micro: int = 0) -> PatchPlan:
        """The member for one micro-batch: K uniform in 1..M−1, then K student layers uniformly."""
        m = self.layer_map.n_student
        g = torch.Generator().manual_seed(hash((self.seed, step, micro)) & 0x7FFF_FFFF_FFFF_FFFF)
        k = int(torch.randint(1, max(m, 2), (1,), generator=g)) if m > 1 else 0
        patched = torch.randperm(m, generator=g)[:k].tolist()
        return PatchPlan(layer_map=self.layer_map, patched=patched, order="mixed")

    def member(self, plan: PatchPlan) -> nn.Module:
        """The member ``plan`` describes, holding the teacher's and the student's very parameters."""
        return assemble(
            {"teacher": self.teacher, "student": self.student},  # type: ignore[dict-item]
            plan.sources,
            plan.embed_source,
            plan.head_source,
            section=None,
        )
