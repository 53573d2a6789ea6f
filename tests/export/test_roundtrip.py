"""Every format read back through its reference reader equals the label map voxel for voxel, on the source grid.

Two sources: a DICOM series (written by write_dicom_series) and an oblique NIfTI whose axes are permuted and
flipped relative to the volume's display order, so any grid mistake moves voxels. Geometry is checked
independently of ichdemo's own reorientation code: every voxel centre of the volume is mapped to world
coordinates with ``Volume.affine`` and looked up in the exported file through the file's own geometry.
"""

import io
import json
import zipfile

import highdicom as hd
import nibabel as nib
import nrrd
import numpy as np
import pytest
import slicerio
from PIL import Image
from pycocotools.coco import COCO

from ichdemo.constants import CLASS_COLORS, CLASSES
from ichdemo.export import export
from ichdemo.export.rle import ls_decode

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lookup_on_file_grid(array_ijk, file_affine_ras, volume):
    """Values of a file's (i, j, k) array at the world positions of every voxel of ``volume`` -> (S, H, W)."""
    s, h, w = volume.shape
    c, r, k = np.meshgrid(np.arange(w), np.arange(h), np.arange(s), indexing="ij")
    world = volume.affine @ np.stack([c.ravel(), r.ravel(), k.ravel(), np.ones(c.size)])
    ijk = np.linalg.inv(file_affine_ras) @ world
    idx = np.rint(ijk[:3]).astype(int)
    np.testing.assert_allclose(ijk[:3], idx, atol=1e-3)  # voxel centres land on voxel centres: same grid
    assert all((idx[a] >= 0).all() and (idx[a] < array_ijk.shape[a]).all() for a in range(3))
    values = array_ijk[idx[0], idx[1], idx[2]]
    return values.reshape(w, h, s).transpose(2, 1, 0)


@pytest.fixture(scope="module", params=["dicom", "nifti"])
def exported(request, dicom_series, nifti_file, tmp_path_factory, stamp, labels_for):
    src, vol = dicom_series if request.param == "dicom" else nifti_file
    labels = labels_for(vol.shape, seed=5)
    out = tmp_path_factory.mktemp(f"export_{request.param}")
    formats = ["nifti", "seg-nrrd", "cvat", "labelstudio", "coco", "overlay"]
    if request.param == "dicom":
        formats.append("dicom-seg")
    paths = export(labels, vol, formats, out, model_info=stamp[0], thresholds=stamp[1], name="case 1")
    return request.param, src, vol, labels, paths


def test_nifti_roundtrip_on_source_grid(exported):
    kind, src, vol, labels, paths = exported
    img = nib.load(paths["nifti"])
    data = np.asarray(img.dataobj)
    assert data.dtype == np.uint8
    np.testing.assert_array_equal(lookup_on_file_grid(data, img.affine, vol), labels)
    if kind == "nifti":  # the file's own voxel order, shape and affine, not a reoriented copy
        source = nib.load(src)
        assert data.shape == source.shape
        np.testing.assert_allclose(img.affine, source.affine, atol=1e-5)
        assert int(img.header["sform_code"]) == 1
    assert b"DRAFT" in img.header["descrip"].tobytes() and b"tiny_lse" in img.header["descrip"].tobytes()
    assert img.header.get_intent()[0] == "label"
    side = json.loads(paths["nifti"].with_name("case_1.labels.json").read_text())
    assert [e["name"] for e in side["labels"]] == ["normal", *CLASSES]
    assert side["provenance"]["thresholds"]["class_thresholds"] == [0.4, 0.5, 0.6, 0.7, 0.8]
    snap = paths["nifti"].with_name("case_1.label.txt").read_text().splitlines()
    assert any(line.split()[:4] == ["1", *map(str, CLASS_COLORS["IPH"])] for line in snap)


def test_seg_nrrd_roundtrip_with_pynrrd_and_slicerio(exported):
    _, _, vol, labels, paths = exported
    data, hdr = nrrd.read(str(paths["seg-nrrd"]), index_order="F")
    assert hdr["space"] == "left-posterior-superior"
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(hdr["space directions"], float).T
    lps[:3, 3] = hdr["space origin"]
    np.testing.assert_array_equal(lookup_on_file_grid(data, LPS @ lps, vol), labels)
    seg = slicerio.read_segmentation(str(paths["seg-nrrd"]))
    names = {s["name"]: s for s in seg["segments"]}
    assert list(names) == list(CLASSES)
    for k, c in enumerate(CLASSES, start=1):
        assert names[c]["labelValue"] == k
        np.testing.assert_allclose(names[c]["color"], np.array(CLASS_COLORS[c]) / 255, atol=1e-5)
        assert (seg["voxels"] == k).sum() == (labels == k).sum()
    assert names["IPH"]["terminology"]["type"] == ["SCT", "274100004", "Cerebral hemorrhage"]
    assert "DRAFT" in seg["content"] and seg["ichdemo_model"] == "tiny_lse v0.test"


def test_cvat_zip_masks_and_labelmap(exported):
    _, _, vol, labels, paths = exported
    with zipfile.ZipFile(paths["cvat"]) as zf:
        names = zf.read("ImageSets/Segmentation/default.txt").decode().split()
        labelmap = [ln for ln in zf.read("labelmap.txt").decode().splitlines() if not ln.startswith("#")]
        colours = {ln.split(":")[0]: tuple(int(v) for v in ln.split(":")[1].split(",")) for ln in labelmap}
        assert list(colours) == ["background", *CLASSES]
        assert len(names) == vol.shape[0]
        for s, stem in enumerate(names):
            cls = Image.open(io.BytesIO(zf.read(f"SegmentationClass/{stem}.png")))
            assert cls.mode == "P"
            rgb = np.asarray(cls.convert("RGB"))
            back = np.zeros(labels.shape[1:], np.uint8)
            for k, c in enumerate(CLASSES, start=1):  # decode by colour, as CVAT does
                back[(rgb == colours[c]).all(axis=2)] = k
            np.testing.assert_array_equal(back, labels[s])
            obj = np.asarray(Image.open(io.BytesIO(zf.read(f"SegmentationObject/{stem}.png"))))
            np.testing.assert_array_equal(obj > 0, labels[s] > 0)
            assert (paths["cvat"].parents[1] / "images" / f"{stem}.png").is_file()


def test_labelstudio_brush_rle_roundtrip(exported):
    _, _, vol, labels, paths = exported
    tasks = json.loads(paths["labelstudio"].read_text())
    assert len(tasks) == vol.shape[0]
    for s, task in enumerate(tasks):
        img_path = paths["labelstudio"].parents[1] / task["data"]["image"]
        assert np.asarray(Image.open(img_path)).shape == labels.shape[1:]
        back = np.zeros(labels.shape[1:], np.uint8)
        (pred,) = task["predictions"]
        assert "tiny_lse v0.test" in pred["model_version"]
        for res in pred["result"]:
            assert res["type"] == "brushlabels" and res["original_height"] == labels.shape[1]
            alpha = ls_decode(res["value"]["rle"]).reshape(*labels.shape[1:], 4)[..., 3]
            back[alpha > 0] = CLASSES.index(res["value"]["brushlabels"][0]) + 1
        np.testing.assert_array_equal(back, labels[s])
    config = (paths["labelstudio"].parent / "config.xml").read_text()
    assert all(f'<Label value="{c}"' in config for c in CLASSES)


def test_labelstudio_rle_decodes_with_label_studios_own_decoder(exported):
    brush = pytest.importorskip("label_studio_converter.brush")
    _, _, _, labels, paths = exported
    tasks = json.loads(paths["labelstudio"].read_text())
    s = labels.shape[0] - 1
    for res in tasks[s]["predictions"][0]["result"]:
        k = CLASSES.index(res["value"]["brushlabels"][0]) + 1
        alpha = brush.decode_rle(res["value"]["rle"]).reshape(*labels.shape[1:], 4)[..., 3]
        np.testing.assert_array_equal(alpha > 0, labels[s] == k)


def test_coco_roundtrip_with_pycocotools(exported):
    _, _, _, labels, paths = exported
    coco = COCO(str(paths["coco"]))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        back = np.zeros((info["height"], info["width"]), np.uint8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            m = coco.annToMask(ann)
            assert ann["area"] == m.sum() and ann["iscrowd"] == 0
            back[m > 0] = ann["category_id"]
        np.testing.assert_array_equal(back, labels[image_id - 1])
        assert (paths["coco"].parents[1] / info["file_name"]).is_file()
    assert "DRAFT" in coco.dataset["info"]["description"]


def test_overlay_pngs_show_classes_and_carry_provenance(exported):
    _, _, _, labels, paths = exported
    files = sorted(paths["overlay"].glob("*.png"))
    with_labels = [s for s in range(labels.shape[0]) if labels[s].any()]
    assert len(files) == len(with_labels)
    img = Image.open(files[-1])
    assert "DRAFT" in img.text["Description"] and json.loads(img.text["ichdemo"])["model"] == "tiny_lse"
    rgb = np.asarray(img.convert("RGB")).astype(int)
    s = with_labels[-1]
    inside = np.argwhere(labels[s] == 5)[-1]  # an EDH voxel (bottom-right corner, away from the caption)
    pixel = rgb[inside[0], inside[1]]
    assert pixel[0] > pixel[2]  # EDH orange (245, 130, 48): red well above blue


def test_dicom_seg_roundtrip_by_referenced_instance(exported):
    kind, _, vol, labels, paths = exported
    if kind != "dicom":
        assert "dicom-seg" not in paths
        return
    seg = hd.seg.segread(paths["dicom-seg"])
    ref = vol.dicom
    assert seg.StudyInstanceUID == ref.study_instance_uid
    assert seg.FrameOfReferenceUID == ref.frame_of_reference_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ref.series_instance_uid
    numbers = {int(d.SegmentNumber): d.SegmentLabel for d in seg.SegmentSequence}
    assert list(numbers.values()) == [CLASSES[v - 1] for v in np.unique(labels) if v > 0]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=ref.sop_instance_uids, combine_segments=True, skip_overlap_checks=True
    )  # (S, H, W) segment numbers, in the order of the UIDs given
    back = np.vectorize(lambda n: 0 if n == 0 else CLASSES.index(numbers[n]) + 1)(pixels).astype(np.uint8)
    np.testing.assert_array_equal(back, labels)
    for frame in seg.PerFrameFunctionalGroupsSequence:  # frames sit at their source slice's position
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        pos = frame.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(
            [float(v) for v in pos], ref.image_positions[ref.sop_instance_uids.index(uid)], atol=1e-3
        )
