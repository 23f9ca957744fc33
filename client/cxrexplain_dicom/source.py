"""What passes from a source instance to the objects derived from it, and who made them.

:class:`SourceLink` is the only reader of the source dataset: it keeps the patient link (Patient ID and Name),
the study's identifiers, the references to the source instance and its pixel grid, and nothing else, so no
writer can copy more of the patient by accident (highdicom copies whole Patient and Study modules from what it
is given; it is given :attr:`SourceLink.dataset`). :class:`Algorithm` is the model that answered, identified
as the IHE AI Results profile asks: Contributing Equipment here, TID 4019 in the SR.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from highdicom import ContributingEquipment
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from . import codes

if TYPE_CHECKING:
    from cxrexplain_client.results import Explanation, ModelDescription

NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
MANUFACTURER = "cxrexplain"

_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows", "Columns")
# The General Study module's identifiers are study-level: every instance of a study carries the same ones, so
# a PACS files the results under the study as it knows it (date, time, ID, accession number).
STUDY = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber")
_COPIED = ("PatientID", "PatientName", "SpecificCharacterSet", "Modality", "PixelSpacing",
           "ImagerPixelSpacing", "PatientOrientation", *STUDY[1:])
# Type 2 attributes of the Patient and General Study modules that highdicom reads from its source: present and
# empty on the link, so the derived objects carry them empty.
_EMPTY = ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", *STUDY[1:])


@dataclass(frozen=True)
class SourceLink:
    """The source instance as its derived objects see it.

    Attributes
    ----------
    dataset
        A new dataset holding only the source's UIDs, Patient ID and Name, Modality, grid (Rows, Columns,
        Pixel Spacing, Patient Orientation) and the empty Type 2 patient and study attributes.
    frame_of_reference_uid
        The source's Frame of Reference UID, or a new one (CR has none; a Parametric Map needs one). Every
        map derived from this link shares it: they lie on one pixel grid.
    """

    dataset: Dataset
    frame_of_reference_uid: str
    has_frame_of_reference: bool = field(default=False)

    @classmethod
    def from_dataset(cls, source: Dataset) -> SourceLink:
        """Read the link from a source image dataset (CR, DX, any single-frame image).

        Raises
        ------
        ValueError
            The source lacks a UID or its grid: it cannot be referenced. Pass the dataset as received.
        """
        missing = [keyword for keyword in _REQUIRED if not source.get(keyword, None)]
        if missing:
            raise ValueError(
                f"the source DICOM has no {', '.join(missing)}: derived objects cannot reference it; "
                "pass the dataset as it was received"
            )
        link = Dataset()
        for keyword in _REQUIRED + _COPIED:
            if source.get(keyword, None) not in (None, ""):
                setattr(link, keyword, source[keyword].value)
        for keyword in _EMPTY:
            if keyword not in link:
                setattr(link, keyword, None)
        own = str(source.get("FrameOfReferenceUID", "") or "")
        return cls(link, own or generate_uid(), has_frame_of_reference=bool(own))

    @property
    def rows(self) -> int:
        return int(self.dataset.Rows)

    @property
    def columns(self) -> int:
        return int(self.dataset.Columns)

    @property
    def pixel_spacing(self) -> list[float]:
        """Row and column spacing in mm: Pixel Spacing, else Imager Pixel Spacing, else a nominal 1 mm."""
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            value = self.dataset.get(keyword, None)
            if value is not None and len(value) == 2:
                return [float(value[0]), float(value[1])]
        return [1.0, 1.0]

    def source_image_item(self) -> Dataset:
        """An item of Source Image Sequence (or any image reference) naming the source instance."""
        ref = Dataset()
        ref.ReferencedSOPClassUID = self.dataset.SOPClassUID
        ref.ReferencedSOPInstanceUID = self.dataset.SOPInstanceUID
        return ref

    def referenced_series_item(self) -> Dataset:
        """An item of Referenced Series Sequence (Common Instance Reference module) naming the source."""
        item = Dataset()
        item.SeriesInstanceUID = self.dataset.SeriesInstanceUID
        item.ReferencedInstanceSequence = [self.source_image_item()]
        return item


@dataclass(frozen=True)
class Algorithm:
    """The model that produced the results: name, version and the sha256 of its weights (when described)."""

    name: str
    version: str
    weights_sha256: str = ""

    @classmethod
    def from_results(cls, explanation: Explanation, description: ModelDescription | None = None) -> Algorithm:
        """The algorithm of an explanation; the weights' sha256 from the model's description when given.

        Raises
        ------
        ValueError
            The description is of another model or version than the one that answered.
        """
        sha = ""
        if description is not None:
            if (description.name, description.version) != (explanation.model_name, explanation.model_version):
                raise ValueError(
                    f"the description is of {description.name} {description.version}, the explanation "
                    f"of {explanation.model_name} {explanation.model_version}: describe the version that "
                    "answered"
                )
            sha = description.weights_sha256
        return cls(explanation.model_name, explanation.model_version, sha)

    @property
    def device_uid(self) -> str:
        """A UID stable for one name, version and weights: the SR's device observer."""
        return str(generate_uid(entropy_srcs=[MANUFACTURER, self.name, self.version, self.weights_sha256]))

    def parameters(self) -> list[str]:
        """TID 4019 Algorithm Parameters."""
        return [f"weights_sha256={self.weights_sha256}"] if self.weights_sha256 else []

    def contributing_equipment(self) -> ContributingEquipment:
        """The Contributing Equipment item (SOP Common) that identifies the algorithm in every object."""
        description = f"AI model {self.name} {self.version}"
        if self.weights_sha256:
            description += f"; weights sha256 {self.weights_sha256}"
        return ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=codes.PROCESSING_EQUIPMENT,
            manufacturer_model_name=self.name[:64],
            software_versions=self.version[:64],
            contribution_description=f"{description}. {NOT_FOR_DIAGNOSTIC_USE}."[:1024],
        )


def mark_derived(ds: Any, link: SourceLink, algorithm: Algorithm, *, image: bool = True) -> None:
    """What every derived object carries: the source's study identifiers, the algorithm as Contributing
    Equipment; an image also the source in Referenced Series Sequence (Common Instance Reference; an SR names
    it in its evidence instead)."""
    for keyword in ("SpecificCharacterSet", *STUDY):  # the character set: Patient Name is written in it
        if keyword in link.dataset:
            setattr(ds, keyword, link.dataset[keyword].value)
    ds.ContributingEquipmentSequence = [algorithm.contributing_equipment()]
    if image:
        ds.ReferencedSeriesSequence = [link.referenced_series_item()]
