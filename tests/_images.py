"""DICOM files the image-reading tests share."""

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def dicom_dataset(patient: str = "p") -> Dataset:
    """A secondary-capture DICOM dataset with its file meta and no pixel data yet."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.PatientID = patient
    return ds


def dicom_without_pixels(path: Path) -> None:
    """A valid DICOM file with no pixel data (a structured report, say)."""
    dicom_dataset().save_as(path, enforce_file_format=True)
