"""The :class:`Problem` record of the dataset checker and the checks shared by COCO and VOC."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from nasdet.errors import DataError

#: Boxes may exceed their image by this many px (rounding) before it is reported.
OUTSIDE_TOLERANCE = 1.0


@dataclass(frozen=True)
class Problem:
    """One problem of a dataset.

    ``file``: the file at fault; ``record``: the record inside it (``"annotation 17"``, or ``""``
    for the file as a whole); ``what``: what is wrong; ``fix``: what to do; ``fatal``: the dataset
    cannot be loaded until it is fixed; ``code``: a stable machine-readable kind such as
    ``"zero_area"`` or ``"corrupt_image"``.
    """

    file: str
    record: str
    what: str
    fix: str
    fatal: bool
    code: str = ""

    def __str__(self) -> str:
        where = f"{self.file}: {self.record}: " if self.record else f"{self.file}: "
        return f"{where}{self.what} — {self.fix}"


def raise_if_fatal(problems: Sequence[Problem], command: str) -> None:
    """Raise ``DataError`` naming the first fatal problem and how many others there are."""
    fatal = [p for p in problems if p.fatal]
    if fatal:
        more = f"and {len(fatal) - 1} more; " if len(fatal) > 1 else ""
        raise DataError(f"{fatal[0]} ({more}run `{command}`)")


def summarize(problems: Sequence[Problem], dropped: int) -> str:
    """One line counting non-fatal problems: ``dropped`` zero-area boxes, then other kinds."""
    kinds = Counter(p.code for p in problems if not p.fatal and p.code != "zero_area")
    parts = [f"dropped {dropped} zero-area boxes for training"] if dropped else []
    parts += [f"{n} x {code.replace('_', ' ')}" for code, n in sorted(kinds.items())]
    return ", ".join(parts)


def fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def fmt_box(box: Iterable[float]) -> str:
    return "[" + ", ".join(fmt_number(v) for v in box) + "]"


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) px of an image file; raise ``ValueError`` saying why it is unreadable."""
    try:
        with Image.open(path) as im:
            size, fmt = im.size, im.format
            im.verify()
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 1024))
                has_end = b"\xff\xd9" in f.read()
            if not has_end:  # truncated, or trailing bytes after the end marker: decode to tell
                with Image.open(path) as im:
                    im.load()
    except FileNotFoundError:
        raise
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        raise ValueError(f"{type(err).__name__}: {err}") from None
    return size


def check_image_file(
    path: Path, expected: tuple[int, int] | None, record: str, problems: list[Problem]
) -> tuple[int, int] | None:
    """Append problems of one image file; return its (width, height) px when readable."""
    try:
        size = image_size(path)
    except FileNotFoundError:
        problems.append(Problem(str(path), record, "image file not found",
                                "add the file or remove the image", True, "missing_image"))
        return None
    except ValueError as err:
        problems.append(Problem(str(path), record, f"corrupt or unreadable image ({err})",
                                "replace the file or remove the image", True, "corrupt_image"))
        return None
    if expected is not None and size != expected:
        problems.append(Problem(
            str(path), record,
            f"image is {size[0]}x{size[1]} px but the annotation says {expected[0]}x{expected[1]}",
            "correct the annotated width/height (boxes must be in file pixels)", True,
            "size_mismatch"))
    return size


def check_box(
    xyxy: tuple[float, float, float, float], size: tuple[int, int], shown: str,
    file: str, record: str, problems: list[Problem],
) -> None:
    """Append geometry problems of one XYXY px box in a (width, height) px image."""
    x1, y1, x2, y2 = xyxy
    width, height = size
    if x2 <= x1 or y2 <= y1:
        area = "zero" if x2 - x1 >= 0 and y2 - y1 >= 0 else "negative"
        problems.append(Problem(file, record, f"box {shown} has {area} area",
                                "fix or delete it (it is dropped in training)", False, "zero_area"))
        return
    if min(x2, width) <= max(x1, 0) or min(y2, height) <= max(y1, 0):
        problems.append(Problem(file, record,
                                f"box {shown} lies entirely outside the {width}x{height} image",
                                "fix or delete it", True, "box_outside"))
    elif (x1 < -OUTSIDE_TOLERANCE or y1 < -OUTSIDE_TOLERANCE
          or x2 > width + OUTSIDE_TOLERANCE or y2 > height + OUTSIDE_TOLERANCE):
        problems.append(Problem(file, record,
                                f"box {shown} extends outside the {width}x{height} image",
                                "fix it (it is clamped to the image)", False, "box_partly_outside"))
