"""De-identification of the DICOM attributes an export copies from the source series, for patient privacy.

A DICOM SEG copies the Patient and Study modules (and a few more) from its source images. By default those copies
go through the DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile with the Retain UIDs Option:
the UIDs stay (a SEG must reference its source series, or no viewer can place it), every other identifying
attribute the profile lists is removed (action X) or emptied (action Z), and private tags are dropped. The result
is marked with PatientIdentityRemoved = YES and the profile's codes (DCM 113100, 113110). Only an explicit
``keep_phi=True`` keeps the source's patient name, ID and birth date.
"""

from __future__ import annotations

import copy

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes

# Table E.1-1 actions for the attributes of the modules a SEG copies (Patient, Clinical Trial Subject, General
# Study, Patient Study, Clinical Trial Study) and for other identifying attributes found in CT headers. Attributes
# with a "Z" (or "Z/D") action must stay present but empty (they are type 2 in the SEG); "X" ones are removed.
PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
)
"""The type-2 Patient and General Study attributes every SEG source header carries (empty when unknown)."""
EMPTY = PATIENT_STUDY_TYPE2 + (
    "ContentCreatorName",
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialSiteID",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "ClinicalTrialTimePointID",
)
REMOVE = (
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthTime",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientComments",
    "EthnicGroup",
    "Occupation",
    "AdditionalPatientHistory",
    "MedicalAlerts",
    "Allergies",
    "SmokingStatus",
    "PregnancyStatus",
    "LastMenstrualDate",
    "PatientReligiousPreference",
    "MilitaryRank",
    "BranchOfService",
    "MedicalRecordLocator",
    "CountryOfResidence",
    "RegionOfResidence",
    "CurrentPatientLocation",
    "PatientState",
    "PatientInsurancePlanCodeSequence",
    "PatientPrimaryLanguageCodeSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "PatientSexNeutered",
    "ReferencedPatientSequence",
    "ReferencedPatientPhotoSequence",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "ReferringPhysicianIdentificationSequence",
    "ConsultingPhysicianName",
    "ConsultingPhysicianIdentificationSequence",
    "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence",
    "RequestingPhysician",
    "RequestingService",
    "StudyDescription",
    "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence",
    "AdmissionID",
    "IssuerOfAdmissionIDSequence",
    "OtherStudyNumbers",
    "RequestAttributesSequence",
    "ReferencedStudySequence",
    "ProcedureCodeSequence",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "InstitutionCodeSequence",
    "StationName",
    "OperatorsName",
    "OperatorIdentificationSequence",
    "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence",
    "SeriesDescription",
    "ProtocolName",
    "DeviceSerialNumber",
    "PerformedProcedureStepID",
    "PerformedProcedureStepDescription",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "ScheduledProcedureStepID",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "ContentDate",
    "ContentTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ImageComments",
    "DerivationDescription",
    "ClinicalTrialSiteName",
    "ClinicalTrialCoordinatingCenterName",
    "ClinicalTrialProtocolName",
    "ClinicalTrialProtocolEthicsCommitteeName",
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
    "ClinicalTrialTimePointDescription",
    "ClinicalTrialSeriesID",
    "ClinicalTrialSeriesDescription",
    "ReasonForTheRequestedProcedure",
    "PatientTransportArrangements",
    "PersonName",
    "VerifyingObserverName",
    "TextComments",
)
IDENTIFYING_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate")
"""What a de-identified export never carries a value for; ``keep_phi`` is the only way to keep them."""

METHOD = "PS3.15 Basic Profile + Retain UIDs Option (ichdemo)"  # LO: at most 64 characters


def basic_profile(ds: Dataset) -> Dataset:
    """A copy of ``ds`` with the profile applied (UIDs kept, private tags removed), marked as de-identified.

    Nested sequences are walked too (an identifier hidden in a sequence item is handled like a top-level one).
    """
    out = copy.deepcopy(ds)
    _clean(out)
    mark_deidentified(out)
    return out


def _clean(ds: Dataset) -> None:
    ds.remove_private_tags()
    for keyword in REMOVE:
        if keyword in ds:
            delattr(ds, keyword)
    for keyword in EMPTY:
        if keyword in ds:
            setattr(ds, keyword, None)
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _clean(item)


def mark_deidentified(ds: Dataset) -> None:
    """Set PatientIdentityRemoved, DeidentificationMethod and its code sequence (Basic Profile, Retain UIDs)."""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    items = []
    for code in (codes.DCM.BasicApplicationConfidentialityProfile, codes.DCM.RetainUidsOption):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)


def identifying_values(ds: Dataset) -> dict[str, str]:
    """The non-empty patient name, ID and birth date of ``ds`` (empty dict when de-identified)."""
    return {k: str(ds.get(k)) for k in IDENTIFYING_KEYWORDS if ds.get(k) not in (None, "")}
