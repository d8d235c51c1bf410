"""Recognizers the offline engine adds to Presidio's: names, addresses, phones, national ids."""

from privacy.recognizers.names import NameRecognizer
from privacy.recognizers.national import EU_ENTITIES, NATIONAL_RECOGNIZERS
from privacy.recognizers.phones import REGIONS, WorldPhoneRecognizer
from privacy.recognizers.places import AddressRecognizer

__all__ = [
    "EU_ENTITIES",
    "NATIONAL_RECOGNIZERS",
    "REGIONS",
    "AddressRecognizer",
    "NameRecognizer",
    "WorldPhoneRecognizer",
]
