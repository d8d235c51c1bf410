"""National identifiers: Presidio's own checksum and pattern recognizers, run in English.

Presidio ships each country's recognizers for that country's language ("es", "it",
"pl"...); the offline engine analyzes in English, so they are built for "en" here.
The `eu` jurisdiction names the EU ones; `default` names every entity the engine can
detect, these included. Left out: vehicle plates and company registers (not
personal data of a subject, and noisy on ordinary numbers).
"""

from __future__ import annotations

from collections.abc import Callable

from presidio_analyzer import EntityRecognizer, PatternRecognizer
from presidio_analyzer import predefined_recognizers as pr


def _context_decides(base: type[PatternRecognizer]) -> type[PatternRecognizer]:
    """A digits-only identifier whose checksum passes keeps its pattern score instead of
    jumping to 1.0: one US phone number in eleven passes the NHS check, one in ten the
    Luhn check of a Canadian SIN. Its context words ("NHS", "SIN") decide, and without
    them a phone or SSN recognizer names the span. A failed checksum still drops it."""

    class ContextDecides(base):  # type: ignore[valid-type,misc]
        def validate_result(self, pattern_text: str) -> bool | None:
            return None if super().validate_result(pattern_text) else False

    ContextDecides.__name__ = base.__name__
    ContextDecides.__qualname__ = base.__qualname__
    return ContextDecides


NATIONAL_RECOGNIZERS: tuple[Callable[..., EntityRecognizer], ...] = (
    # EU member states
    pr.EsNifRecognizer,
    pr.EsNieRecognizer,
    pr.EsPassportRecognizer,
    pr.ItFiscalCodeRecognizer,
    pr.ItDriverLicenseRecognizer,
    pr.ItIdentityCardRecognizer,
    pr.ItPassportRecognizer,
    _context_decides(pr.ItVatCodeRecognizer),
    _context_decides(pr.PlPeselRecognizer),
    pr.FiPersonalIdentityCodeRecognizer,
    pr.SePersonnummerRecognizer,
    _context_decides(pr.DeTaxIdRecognizer),
    pr.DeIdCardRecognizer,
    pr.DePassportRecognizer,
    pr.DeSocialSecurityRecognizer,
    pr.DeHealthInsuranceRecognizer,
    # United Kingdom
    _context_decides(pr.NhsRecognizer),
    pr.UkNinoRecognizer,
    pr.UkPassportRecognizer,
    pr.UkDrivingLicenceRecognizer,
    # North America, India, Australia, Singapore
    _context_decides(pr.CaSinRecognizer),
    pr.InPanRecognizer,
    _context_decides(pr.InAadhaarRecognizer),
    pr.InPassportRecognizer,
    pr.InVoterRecognizer,
    _context_decides(pr.AuTfnRecognizer),
    _context_decides(pr.AuMedicareRecognizer),
    pr.SgFinRecognizer,
)

# The identifiers of EU member states (what the `eu` jurisdiction adds by name).
EU_ENTITIES = (
    "ES_NIF",
    "ES_NIE",
    "ES_PASSPORT",
    "IT_FISCAL_CODE",
    "IT_DRIVER_LICENSE",
    "IT_IDENTITY_CARD",
    "IT_PASSPORT",
    "IT_VAT_CODE",
    "PL_PESEL",
    "FI_PERSONAL_IDENTITY_CODE",
    "SE_PERSONNUMMER",
    "DE_TAX_ID",
    "DE_ID_CARD",
    "DE_PASSPORT",
    "DE_SOCIAL_SECURITY",
    "DE_HEALTH_INSURANCE",
)
