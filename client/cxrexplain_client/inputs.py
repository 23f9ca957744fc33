"""The CLI's inputs: files and folders (walked recursively) to the images to explain, each with the name of
its output folder and the study its report page belongs to.

DICOM file names often hold patient names, so a DICOM input is named by its SOP Instance UID and grouped by
its Study Instance UID, read from its header; a PNG or JPEG by its file stem. Nothing else of a path is used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .results import safe_name

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})


@dataclass(frozen=True)
class InputImage:
    """One image to explain.

    ``name`` is its output folder (SOP Instance UID, or file stem; unique in the run), ``study`` its report
    page (Study Instance UID, or ``name``); ``error`` says why it cannot be sent (then it is reported failed).
    """

    path: Path
    dicom: bool
    name: str
    study: str
    error: str | None = None


def has_dicom_preamble(path: Path) -> bool:
    """True when the file is a DICOM Part 10 file: ``DICM`` after its 128-byte preamble (any extension)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _wanted(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in IMAGE_SUFFIXES or suffix in DICOM_SUFFIXES or has_dicom_preamble(path)


def _walk(folder: Path) -> Iterable[Path]:
    """PNG, JPEG and DICOM files under ``folder``, in a stable order; hidden files and folders skipped."""
    for path in sorted(folder.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        if not hidden and path.is_file() and _wanted(path):
            yield path


def _dicom_ids(path: Path) -> tuple[str, str, str | None]:
    """(SOP Instance UID, Study Instance UID, error) from the header; the pixels are not read here."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        return "", "", "reading DICOM needs pydicom: pip install 'cxrexplain-client[dicom]'"
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=not has_dicom_preamble(path))
        return str(ds.get("SOPInstanceUID", "") or ""), str(ds.get("StudyInstanceUID", "") or ""), None
    except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError) as exc:
        return "", "", f"not a readable DICOM file ({type(exc).__name__}: {exc})"


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return "unreadable"


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``... when taken (compared case-blind: file systems may be)."""
    candidate, n = name, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{name}-{n}"
    taken.add(candidate.lower())
    return candidate


def collect(arguments: Sequence[str]) -> list[InputImage]:
    """The images named by the command line: files as given, folders walked recursively.

    Parameters
    ----------
    arguments
        Paths of files (sent whatever their type: the server names what it cannot read) and folders (PNG,
        JPEG and DICOM inside, DICOM recognized by its preamble as well as by ``.dcm``).

    Returns
    -------
    list[InputImage]
        In the order given (a folder's files sorted); a path that does not exist or a DICOM header that
        cannot be read comes back with ``error`` set, so the run reports it instead of stopping.
    """
    taken: set[str] = set()
    out: list[InputImage] = []
    for argument in arguments:
        root = Path(argument)
        if root.is_dir():
            paths = list(_walk(root))
        elif root.is_file():
            paths = [root]
        else:
            name = _unique("missing", taken)
            out.append(InputImage(root, False, name, name, "no such file or folder"))
            continue
        for path in paths:
            dicom = path.suffix.lower() in DICOM_SUFFIXES or has_dicom_preamble(path)
            if not dicom:
                name = _unique(safe_name(path.stem) or "image", taken)
                out.append(InputImage(path, False, name, name))
                continue
            sop, study, error = _dicom_ids(path)
            # Never the file name: without a SOP Instance UID, a digest of the file stands in for it.
            uid = safe_name(sop) or "dicom-" + _digest(path)
            name = _unique(uid, taken)
            out.append(InputImage(path, True, name, safe_name(study) or name, error))
    return out
