"""The curriculum core: phases, warmup gates, tiers, caps and floors, and a sampler over sources."""

from toolkit.curriculum.core import Curriculum
from toolkit.curriculum.plan import CurriculumPlan

__all__ = ["Curriculum", "CurriculumPlan"]
