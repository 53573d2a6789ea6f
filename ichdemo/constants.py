"""Names, colours and windows shared by every module (METHOD.md: class order IPH, IVH, SAH, SDH, EDH)."""

CLASSES: tuple[str, ...] = ("IPH", "IVH", "SAH", "SDH", "EDH")
"""Subtype short names in the model's output order; label value k+1 in a label map is CLASSES[k], 0 is normal."""

CLASS_NAMES: dict[str, str] = {
    "IPH": "Intraparenchymal hemorrhage",
    "IVH": "Intraventricular hemorrhage",
    "SAH": "Subarachnoid hemorrhage",
    "SDH": "Subdural hemorrhage",
    "EDH": "Epidural hemorrhage",
}

CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "IPH": (230, 25, 75),
    "IVH": (60, 180, 75),
    "SAH": (255, 225, 25),
    "SDH": (0, 130, 200),
    "EDH": (245, 130, 48),
}

WINDOWS: dict[str, tuple[float, float]] = {
    "paper": (25.0, 130.0),
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "bone": (40.0, 380.0),
    "ctich": (40.0, 120.0),
}
"""Window presets as (centre, width) in HU; "paper" is the method's default (METHOD.md, Input); "ctich" is the window
baked into the CT-ICH JPEGs (level 40, width 120), which a model trained on them applies to HU input."""

RESEARCH_NOTICE = "Research use only: draft output of a weakly supervised model, not a diagnosis."
