"""One RecognizerResult the way Presidio's context enhancer expects it (with an explanation)."""

from __future__ import annotations

from typing import Protocol

from presidio_analyzer import AnalysisExplanation, RecognizerResult


class Named(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def id(self) -> str: ...


def finding(recognizer: Named, entity: str, start: int, end: int, score: float) -> RecognizerResult:
    """The enhancer finds a result's recognizer (and its context words) by this id."""
    return RecognizerResult(
        entity,
        start,
        end,
        score,
        analysis_explanation=AnalysisExplanation(recognizer=recognizer.name, original_score=score),
        recognition_metadata={
            RecognizerResult.RECOGNIZER_NAME_KEY: recognizer.name,
            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: recognizer.id,
        },
    )


def unescape_newlines(text: str) -> str:
    """Text pasted from JSON or logs carries line breaks as the two characters "\\n";
    read them as a space and a line break (same length: offsets stay valid)."""
    return text.replace("\\n", " \n")
