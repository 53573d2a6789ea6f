"""Coded concepts of the subtypes, checked against pydicom's DICOM PS3.16 code dictionary."""

import pytest
from pydicom.sr.codedict import codes

from ichdemo.constants import CLASSES
from ichdemo.export.codes import CATEGORY, PRIVATE_SCHEME, TYPES, slicer_terminology, uses_private_scheme


def _pydicom_sct_meanings() -> dict[str, set[str]]:
    """SCT code value -> every meaning pydicom's dictionary gives it (a few values carry several)."""
    out: dict[str, set[str]] = {}
    for keyword in codes.SCT.dir():
        code = getattr(codes.SCT, keyword)
        out.setdefault(code.value, set()).add(code.meaning)
    return out


SCT_CODES = [("category", CATEGORY)] + [(c, code) for c, code in TYPES.items() if code.scheme_designator == "SCT"]


@pytest.mark.parametrize("name,code", SCT_CODES, ids=[n for n, _ in SCT_CODES])
def test_sct_codes_agree_with_pydicom_where_pydicom_has_them(name, code):
    meanings = _pydicom_sct_meanings().get(code.value)
    if meanings is None:  # not in DICOM PS3.16; codes.py cites two independent sources instead
        assert name != "category", "the segmentation category must come from DICOM CID 7150"
        return
    assert code.meaning in meanings, f"{name}: SCT {code.value} is {meanings} in pydicom, not {code.meaning!r}"


def test_category_is_the_cid_7150_concept():
    assert (CATEGORY.value, CATEGORY.scheme_designator) == ("49755003", "SCT")
    assert CATEGORY == codes.cid7150.MorphologicallyAbnormalStructure


def test_verified_sct_codes_and_private_ones():
    values = {c: (t.scheme_designator, t.value) for c, t in TYPES.items()}
    assert values == {
        "IPH": ("SCT", "274100004"),
        "IVH": (PRIVATE_SCHEME, "IVH"),
        "SAH": ("SCT", "21454007"),
        "SDH": ("SCT", "95453001"),
        "EDH": (PRIVATE_SCHEME, "EDH"),
    }
    assert tuple(TYPES) == CLASSES
    assert PRIVATE_SCHEME.startswith("99")  # PS3.3 8.1: private coding scheme designators start with "99"


def test_uses_private_scheme():
    assert uses_private_scheme(["IPH", "IVH"]) and uses_private_scheme(["EDH"])
    assert not uses_private_scheme(["IPH", "SAH", "SDH"]) and not uses_private_scheme([])


def test_slicer_terminology_carries_both_codes():
    entry = slicer_terminology("SDH")
    assert "~SCT^49755003^Morphologically Abnormal Structure~SCT^95453001^Subdural intracranial hematoma~" in entry
    assert f"~{PRIVATE_SCHEME}^EDH^" in slicer_terminology("EDH")
