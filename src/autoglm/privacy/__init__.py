"""Personal data in prompts, answers and logs: recognisers with verified checksums, and a
guard that allows, masks or blocks each category (``guard``), streamed answers included
(``stream``)."""

from autoglm.errors import PiiBlockedError
from autoglm.privacy.guard import (
    ACTIONS,
    Action,
    GuardPolicy,
    PiiGuard,
    Result,
)
from autoglm.privacy.recognisers import (
    DEFAULT_RECOGNISERS,
    AnchoredRecogniser,
    Recogniser,
    keep,
)
from autoglm.privacy.scanner import Finding, Scanner
from autoglm.privacy.stream import StreamGuard

__all__ = [
    "ACTIONS", "Action", "AnchoredRecogniser", "DEFAULT_RECOGNISERS", "Finding",
    "GuardPolicy", "PiiBlockedError", "PiiGuard", "Recogniser", "Result", "Scanner",
    "StreamGuard", "keep",
]
