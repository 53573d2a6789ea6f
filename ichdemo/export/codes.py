"""Coded concepts for the five subtypes, shared by DICOM SEG and 3D Slicer's segment terminology.

Category: SCT 49755003, "Morphologically Altered Structure" (the meaning DICOM CID 7150 gives it; pydicom's
``codes.SCT.MorphologicallyAbnormalStructure`` is the same code).

Types, and how each code was checked (issue 7 asked to verify every one; none is in pydicom's or highdicom's
code dictionaries):
- IPH: SCT 274100004 "Cerebral hemorrhage" (the SNOMED CT concept for intracerebral/intraparenchymal hemorrhage),
  confirmed with its fully specified name "Cerebral hemorrhage (disorder)" in several public FHIR value sets.
- SAH: SCT 21454007 "Subarachnoid intracranial hemorrhage", confirmed the same way.
- SDH: SCT 35486000 "Subdural intracranial hemorrhage", confirmed in two independent public sources.
- IVH and EDH: no SNOMED CT code could be confirmed from a trustworthy source here (the candidates found
  disagreed, and one of them turned out to be an unrelated concept). Rather than write a possibly wrong SNOMED code
  into a medical file, they use this project's private coding scheme ``99ICHDEMO`` (DICOM PS3.3 8.1: designators
  starting with "99" are private). Replace them with the SNOMED CT concepts once checked against a SNOMED CT browser.
"""

from __future__ import annotations

from pydicom.sr.coding import Code

from ichdemo.constants import CLASS_NAMES, CLASSES

PRIVATE_SCHEME = "99ICHDEMO"

CATEGORY = Code("49755003", "SCT", "Morphologically Altered Structure")

TYPES: dict[str, Code] = {
    "IPH": Code("274100004", "SCT", "Cerebral hemorrhage"),
    "IVH": Code("IVH", PRIVATE_SCHEME, CLASS_NAMES["IVH"]),
    "SAH": Code("21454007", "SCT", "Subarachnoid intracranial hemorrhage"),
    "SDH": Code("35486000", "SCT", "Subdural intracranial hemorrhage"),
    "EDH": Code("EDH", PRIVATE_SCHEME, CLASS_NAMES["EDH"]),
}
assert tuple(TYPES) == CLASSES


def slicer_terminology(subtype: str) -> str:
    """3D Slicer's ``TerminologyEntry`` tag for a segment (the ``Segment<N>_Tags`` field of a .seg.nrrd)."""
    c, t = CATEGORY, TYPES[subtype]
    return (
        "Segmentation category and type - 3D Slicer General Anatomy list"
        f"~{c.scheme_designator}^{c.value}^{c.meaning}"
        f"~{t.scheme_designator}^{t.value}^{t.meaning}"
        "~^^~Anatomic codes - DICOM master list~^^~^^"
    )
