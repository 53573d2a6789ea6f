"""ichdemo: weakly supervised localization and quantification of intracranial hemorrhage on head CT.

Research software: its masks and volumes are drafts, not a diagnosis.
"""

from ichdemo.constants import CLASSES, RESEARCH_NOTICE

__version__ = "0.1.0"
__all__ = ["CLASSES", "RESEARCH_NOTICE", "__version__"]
