"""PNG/JPG slices and stacks: 8-bit grey images of a display window (CT-ICH JPEGs, PACS exports, phone photos...).

``load_images`` turns the grey levels back into Hounsfield units (``Volume.prewindowed`` is False): with the window
the caller declares (``image_window``: a preset such as "ctich" or "brain", "40/80", a (centre, width) pair) or, when
none is declared, the window ``ichdemo.io.window.estimate_window`` finds from the brain and CSF densities. HU are
exact to the 8-bit rounding inside the window; grey 0 and 255 only say "at most the window's low end" and "at least
its high end" and keep those bounds, except the black background around the head (connected to the image border),
which is air and becomes ``AIR_HU``. What was assumed is in ``Volume.meta["input_window"]``; a warning says when the
estimate is unsure or a declared window does not fit the image. ``stack_images`` (used for CT-ICH training data)
keeps the grey levels 0..255 and ``prewindowed`` True.

Colour images become grey (ITU-R 601 luma, PIL's "L"); a warning says so when the channels differ enough to suggest
coloured annotations. Such files carry no spacing: unless the caller gives one, ``DEFAULT_SPACING`` is used, flagged
as assumed, and volumes are estimates.

A stack is a folder or list of images ordered by the natural order of their names (2.jpg before 10.jpg). Images
in several folders: the folder with most images is taken (a folder named "brain" wins a tie, as in CT-ICH's
brain/bone layout); mask images (names ending in _seg, _HGE_Seg, _mask, _label) are left out.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from ichdemo.errors import CorruptInputError, IchdemoError, UnsafeInputError, UnsupportedInputError, brief
from ichdemo.io.limits import Limits
from ichdemo.io.nifti import grid_affine
from ichdemo.io.spacing import CRANIAL_BREADTH_MM, estimate_in_plane_mm
from ichdemo.io.window import Window, check_declared, estimate_window, grey_to_hu, parse_window
from ichdemo.volume import Volume

DEFAULT_SPACING: tuple[float, float, float] = (5.0, 1.0, 1.0)
"""(slice, row, col) mm assumed for images without spacing: a typical 5 mm head CT slice, 1 mm pixels."""

_MASK_SUFFIX = re.compile(r"(_hge)?_(seg|mask|label)$", re.IGNORECASE)
_COLOUR_SPREAD = 8.0  # mean |max - min| over RGB channels, in grey levels, above which a warning is given
_CHUNK_BOMB = "Decompressed data too large"  # PIL's ValueError for a metadata chunk over MAX_TEXT_CHUNK
_ESTIMATE = "no voxel spacing in PNG/JPG: assumed {} mm (slice x row x col); volumes in mL are estimates"
AIR_HU = -1000.0
"""HU given to the black background around the head (air), which a window clips to its low end."""
_AIR_GREY = 2.0  # grey levels up to this count as black background (JPEG leaves a little noise in it)


def natural_key(path: str | Path) -> tuple:
    """Sort key for names in natural order: '2.jpg' < '10.jpg' < 'b1.jpg'; the full path breaks ties."""
    name = Path(path).name
    parts = re.split(r"(\d+)", name.lower())
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p), str(path)


def is_mask_name(path: str | Path) -> bool:
    """True for file names that mark a mask image (``12_HGE_Seg.jpg``, ``a_mask.png``)."""
    return bool(_MASK_SUFFIX.search(Path(path).stem))


def _grey(im: Image.Image) -> tuple[np.ndarray, list[str]]:
    """Any PIL mode -> float32 grey 0..255, with a warning for colour or rescaled 16-bit images."""
    if im.mode == "L":
        return np.asarray(im, dtype=np.float32), []
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float32)
        if arr.max(initial=0) <= 255 and arr.min(initial=0) >= 0:
            return arr, []
        top = 65535.0 if im.mode.startswith("I;16") else float(arr.max())
        return np.clip(arr * (255.0 / top), 0, 255), [f"{im.mode} image scaled to grey 0..255"]
    rgb = im.convert("RGB")
    channels = np.asarray(rgb, dtype=np.int16)
    spread = float((channels.max(axis=2) - channels.min(axis=2)).mean())
    grey = np.asarray(rgb.convert("L"), dtype=np.float32)
    if spread > _COLOUR_SPREAD:
        return grey, [
            f"colour image (channels differ by {spread:.0f} grey levels on average) converted to grey; "
            "coloured annotations become part of the image"
        ]
    return grey, []


def read_grey(path: str | Path, limits: Limits | None = None) -> tuple[np.ndarray, list[str]]:
    """Read one PNG/JPG as (H, W) float32 grey levels 0..255.

    Raises:
        UnsafeInputError: more pixels than ``limits.max_pixels`` (checked from the header, before decoding) or
            than PIL's own decompression-bomb limit (``DecompressionBombError``; the global
            ``Image.MAX_IMAGE_PIXELS`` is left alone, as changing it would affect every thread), or a metadata
            chunk that inflates past PIL's ``MAX_TEXT_CHUNK``.
        CorruptInputError: not a readable image, or truncated or damaged.
    """
    limits = limits or Limits()
    path = Path(path)
    try:
        with Image.open(path) as im:  # reads the header only; PIL refuses sizes over 2 x Image.MAX_IMAGE_PIXELS
            limits.check_pixels(im.height, im.width, path.name)
            im.load()
            return _grey(im)
    except IchdemoError:
        raise
    except Image.DecompressionBombError as err:
        raise UnsafeInputError(f"{path.name}: image over the decompression-bomb size limit ({brief(err)})") from err
    except UnidentifiedImageError as err:
        raise CorruptInputError(f"{path.name}: not a readable PNG/JPEG image") from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # PIL's PNG reader raises all of these (fuzzing)
        if _CHUNK_BOMB in str(err):  # a zTXt/iTXt/iCCP chunk that inflates past PIL's MAX_TEXT_CHUNK
            raise UnsafeInputError(
                f"{path.name}: PNG metadata expands beyond the decoder's limit ({brief(err)})"
            ) from err
        raise CorruptInputError(f"{path.name}: image is truncated or damaged ({brief(err)})") from err


def choose_stack(files: list[Path]) -> tuple[list[Path], list[str]]:
    """Leave out mask images; keep the folder with most images (every image, when each has a folder of its own, as
    the app's uploads do); return them in natural order of their names, with warnings."""
    warnings = []
    masks = [f for f in files if is_mask_name(f)]
    if masks and len(masks) < len(files):
        files = [f for f in files if not is_mask_name(f)]
        warnings.append(f"left out {len(masks)} mask image(s) (names ending in _seg/_mask/_label)")
    folders = Counter(f.parent for f in files)
    if len(folders) == len(files):  # one image per folder: files uploaded together (a web server gives each upload
        return sorted(files, key=natural_key), warnings  # its own folder) are one stack, in the names' natural order
    if len(folders) > 1:
        best = max(folders, key=lambda d: (folders[d], d.name.lower() == "brain", -sorted(folders).index(d)))
        others = ", ".join(f"{d.name}/ ({n})" for d, n in folders.items() if d != best)
        warnings.append(
            f"images found in {len(folders)} folders; stacked {best.name}/ ({folders[best]}), left out {others}"
        )
        files = [f for f in files if f.parent == best]
    return sorted(files, key=natural_key), warnings


def read_stack(files: list[Path], limits: Limits, what: str) -> tuple[np.ndarray, list[str]]:
    """Read ``files`` in the given order as (S, H, W) float32 grey levels 0..255, with per-file warnings.

    Raises:
        UnsupportedInputError: images of different sizes.
        UnsafeInputError: more slices than ``limits`` allow, or an image over a size limit.
        CorruptInputError: an unreadable image.
    """
    limits.check_slices(len(files), what)
    slices, warnings = [], []
    for f in files:
        arr, more = read_grey(f, limits)
        slices.append(arr)
        warnings += [f"{f.name}: {w}" for w in more]
    sizes = Counter(a.shape for a in slices)
    if len(sizes) > 1:
        listing = ", ".join(f"{w}x{h} ({n})" for (h, w), n in sizes.most_common())
        raise UnsupportedInputError(f"images in a stack must share one size; found {listing}")
    return np.stack(slices).astype(np.float32), warnings


def _image_volume(
    data: np.ndarray,
    files: list[Path],
    spacing: tuple[float, float, float],
    *,
    spacing_assumed: bool,
    what: str,
    values: str,
    **kw,
) -> Volume:
    """The ``Volume`` of an image stack; ``values`` describes the data ("pre-windowed grey 0..255", "HU from...")."""
    return Volume(
        data=data,
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        affine=grid_affine(spacing),
        source="image",
        description=(
            f"{what}: {data.shape[0]} image(s) of {data.shape[2]}x{data.shape[1]} px, {values}, "
            f"spacing {' x '.join(f'{s:g}' for s in spacing)} mm{' (assumed)' if spacing_assumed else ''}"
        ),
        slice_names=[f.stem for f in files],
        spacing_assumed=spacing_assumed,
        **kw,
    )


def _spacing_warning(spacing: tuple[float, float, float]) -> str:
    return _ESTIMATE.format(" x ".join(f"{s:g}" for s in spacing))


def stack_images(
    files: list[Path], limits: Limits, spacing: tuple[float, float, float], *, spacing_assumed: bool, what: str
) -> Volume:
    """Read ``files`` in the given order into one pre-windowed ``Volume`` of grey levels 0..255 (no HU).

    This is the training data's form (CT-ICH JPEGs, ``ichdemo.io.ctich``); ``load_images`` gives HU.

    Args:
        files: image paths, slice order.
        limits: size limits.
        spacing: (slice, row, col) mm.
        spacing_assumed: flag (and warn) that ``spacing`` is a default, not read from the data.
        what: start of the description ("PNG/JPG stack", "CT-ICH patient 49"...).
    """
    data, warnings = read_stack(files, limits, what)
    return _image_volume(
        data,
        files,
        spacing,
        spacing_assumed=spacing_assumed,
        what=what,
        values="pre-windowed grey 0..255",
        prewindowed=True,
        warnings=warnings + ([_spacing_warning(spacing)] if spacing_assumed else []),
        meta={"files": len(files)},
    )


# ------------------------------------------------------------------------------------------------- grey -> HU
def outside_air(grey: np.ndarray) -> np.ndarray:
    """(S, H, W) bool: black pixels connected to the image border in their slice, the air around the head."""
    out = np.zeros(grey.shape, dtype=bool)
    for i, g in enumerate(grey):
        labels, _ = ndimage.label(g <= _AIR_GREY)
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        out[i] = np.isin(labels, border[border > 0])
    return out


def _window_used(grey: np.ndarray, window: Window | None) -> tuple[dict, list[str]]:
    """The window to invert (declared, else estimated) as ``meta["input_window"]``, and warnings about it."""
    if window is not None:
        problem = check_declared(grey, window.centre, window.width)
        reason = problem or "declared by the caller"
        info = dict(centre=window.centre, width=window.width, name=window.name, declared=True)
        return {**info, "confidence": 0.0 if problem else 1.0, "reason": reason}, [problem] if problem else []
    est = estimate_window(grey)
    info = dict(centre=est.centre, width=est.width, name=est.name, declared=False)
    warnings = []
    if est.unsure:
        warnings.append(
            f"image window not declared and estimated with low confidence ({est.confidence:.2f}): {est.reason}; "
            "give the window the images were exported with (image_window, e.g. 'ctich', 'brain' or '40/80')"
        )
    return {**info, "confidence": est.confidence, "reason": est.reason}, warnings


def grey_stack_to_hu(grey: np.ndarray, window: Window | None = None) -> tuple[np.ndarray, dict, list[str]]:
    """Grey levels 0..255 -> HU under the declared or estimated window.

    Args:
        grey: (S, H, W) grey levels.
        window: the window the images were exported with, or None to estimate it.

    Returns:
        (hu, input_window, warnings): float32 HU (outside air ``AIR_HU``, other clipped pixels at the window's
        bounds), the ``meta["input_window"]`` record, and warnings for an unsure estimate or a doubtful declaration.
    """
    info, warnings = _window_used(grey, window)
    hu = grey_to_hu(grey, info["centre"], info["width"])
    hu[outside_air(grey)] = AIR_HU
    return hu, info, warnings


def _values_text(info: dict) -> str:
    how = "declared" if info["declared"] else f"estimated, confidence {info['confidence']:.2f}"
    return f"HU from grey by window {info['name']} {info['centre']:g}/{info['width']:g} ({how})"


def load_images(
    files: list[Path],
    limits: Limits | None = None,
    spacing: tuple[float, float, float] | None = None,
    window: str | tuple[float, float] | Window | None = None,
) -> Volume:
    """Load one PNG/JPG or a stack of them as HU (see the module docstring for the order and folder rules).

    Args:
        files: image paths in any order.
        limits: size limits (``Limits()`` by default).
        spacing: (slice, row, col) mm; ``DEFAULT_SPACING``, flagged as assumed, when None.
        window: the window the images were exported with (``ichdemo.io.window.parse_window``: "ctich", "brain",
            "40/80", (40, 80)...); None or "auto" estimates it from the images.

    Raises:
        UnsupportedInputError: images of different sizes.
        CorruptInputError: an unreadable image.
        UnsafeInputError: over a size limit.
        ConfigError: a malformed ``window``.
    """
    limits = limits or Limits()
    window = parse_window(window)
    chosen, warnings = choose_stack([Path(f) for f in files])
    what = "PNG/JPG image" if len(chosen) == 1 else "PNG/JPG stack"
    grey, more = read_stack(chosen, limits, what)
    hu, info, about_window = grey_stack_to_hu(grey, window)
    used, about_spacing = (spacing, []) if spacing else _estimated_spacing(hu)
    return _image_volume(
        hu,
        chosen,
        used,
        spacing_assumed=spacing is None,
        what=what,
        values=_values_text(info),
        prewindowed=False,
        warnings=warnings + more + about_window + about_spacing,
        meta={"files": len(chosen), "input_window": info},
    )


def _estimated_spacing(hu: np.ndarray) -> tuple[tuple[float, float, float], list[str]]:
    """Spacing for images that carry none: the pixel size from the skull's width (``ichdemo.io.spacing``) and the
    usual 5 mm slices, else ``DEFAULT_SPACING``; with the warning that says which."""
    px = estimate_in_plane_mm(hu)
    if px is None:
        return DEFAULT_SPACING, [_spacing_warning(DEFAULT_SPACING)]
    used = (DEFAULT_SPACING[0], round(px, 4), round(px, 4))
    return used, [
        f"no voxel spacing in PNG/JPG: {px:.3f} mm pixels estimated from the skull's width (an adult's is about "
        f"{CRANIAL_BREADTH_MM:g} mm) and {used[0]:g} mm slices assumed; volumes in mL are estimates (set the "
        "spacing if you know it)"
    ]
