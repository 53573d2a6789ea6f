"""Coded concepts for the five subtypes, shared by DICOM SEG and 3D Slicer's segment terminology.

How the codes were verified: a SNOMED CT (SCT) code is used only when DICOM PS3.16 states it (read through
pydicom's code dictionary, which is generated from PS3.16), or when two independent public sources agree on the
concept id and its meaning. A subtype that fails this keeps the project's private coding scheme ``99ICHDEMO`` (DICOM
PS3.3 8.1: designators starting with "99" are private) rather than a possibly wrong SNOMED code in a medical file.

None of the five subtypes is in DICOM PS3.16: pydicom's dictionary (``pydicom/sr/_concepts_dict.py``) holds only the
generic SCT 50960005 "Hemorrhage" (CID 7151/7159) and SCT 1386000 "Intracranial hemorrhage (disorder)", highdicom
adds none, and 3D Slicer's DICOM master terminology (repo Slicer/Slicer,
Modules/Loadable/Terminologies/Resources/SegmentationCategoryTypeModifier-DICOM-Master.json) lists only "Hemorrhage"
(SCT 50960005, CID 7159) among its Morphologically Altered Structure types. The sources of each code are in the
comments beside it; ``tests/export/test_codes.py`` checks every SCT code here against pydicom's dictionary wherever
pydicom has it.

Summary: category SCT 49755003; IPH SCT 274100004, SAH SCT 21454007, SDH SCT 95453001; IVH and EDH private.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ichdemo.constants import CLASS_NAMES, CLASSES

PRIVATE_SCHEME = "99ICHDEMO"

# SCT 49755003 "Morphologically Abnormal Structure": DICOM CID 7150 "Segmentation Property Categories", taken from
# pydicom's dictionary itself. Slicer's DICOM master list (above) has the same value under CID 7150 with the older
# wording "Morphologically Altered Structure"; readers match codes on scheme and value, not on the meaning.
CATEGORY: Code = codes.SCT.MorphologicallyAbnormalStructure

TYPES: dict[str, Code] = {
    # Intracerebral = intraparenchymal. Sources: repo spiros/hdr-caliber-phenotype-library,
    # _data/codelists/covid_impact_ccu000_England_stroke_HS_SNOMEDCT.csv (HDR UK CALIBER: "274100004,Cerebral
    # hemorrhage"); repo tecnomod-um/SK-FHIR-IG, input/pagecontent/valuesets-StrokeDiagnosisVS.md ("274100004 -
    # Cerebral hemorrhage (disorder)").
    "IPH": Code("274100004", "SCT", "Cerebral hemorrhage"),
    # Private: no SNOMED code verified. 274110009 appears in a single public project only; 195168007 "Intracerebral
    # haemorrhage, intraventricular" (CALIBER list above) is intracerebral hemorrhage extending into the ventricles,
    # not intraventricular hemorrhage as a compartment; another candidate, 71186008, is croup.
    "IVH": Code("IVH", PRIVATE_SCHEME, CLASS_NAMES["IVH"]),
    # Sources: NCBI MedGen https://www.ncbi.nlm.nih.gov/medgen/11625 ("Subarachnoid intracranial hemorrhage
    # (21454007)"); repo tecnomod-um/SK-FHIR-IG, input/pagecontent/valuesets-StrokeDiagnosisVS.md ("21454007 -
    # Subarachnoid intracranial hemorrhage (disorder)").
    "SAH": Code("21454007", "SCT", "Subarachnoid intracranial hemorrhage"),
    # Sources: NCBI MedGen https://www.ncbi.nlm.nih.gov/medgen/6775 ("Subdural intracranial hematoma (95453001)");
    # VisualDx https://v7.visualdx.com/visualdx/diagnosis/?contentModuleId=101&diagnosisId=53161&moduleId=100
    # ("95453001 - Subdural intracranial hematoma"). The code used before, 35486000 "Subdural intracranial
    # hemorrhage", is on the MedGen page too but on no second source found; the hematoma concept is also what a
    # subdural collection on CT is.
    "SDH": Code("95453001", "SCT", "Subdural intracranial hematoma"),
    # Private: the only candidate found, 62414007, comes from the same unreliable source that gave croup (71186008)
    # for IVH; no second source. Replace both private codes once checked against a SNOMED CT browser.
    "EDH": Code("EDH", PRIVATE_SCHEME, CLASS_NAMES["EDH"]),
}
assert tuple(TYPES) == CLASSES


def uses_private_scheme(subtypes) -> bool:
    """Whether any of ``subtypes`` (class names) is coded in ``PRIVATE_SCHEME`` (a SEG must then declare it)."""
    return any(TYPES[s].scheme_designator == PRIVATE_SCHEME for s in subtypes)


def slicer_terminology(subtype: str) -> str:
    """3D Slicer's ``TerminologyEntry`` tag for a segment (the ``Segment<N>_Tags`` field of a .seg.nrrd)."""
    c, t = CATEGORY, TYPES[subtype]
    return (
        "Segmentation category and type - 3D Slicer General Anatomy list"
        f"~{c.scheme_designator}^{c.value}^{c.meaning}"
        f"~{t.scheme_designator}^{t.value}^{t.meaning}"
        "~^^~Anatomic codes - DICOM master list~^^~^^"
    )
