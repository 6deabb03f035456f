"""What a call means for the patient, so that colours follow meaning rather than "positive in red".

A calcified (benign pattern) or round nodule is reassuring; malignant, spiculated, lobulated, ill-defined and
non-solid are concerning; "obvious" (subtlety) is neither. A task set may define other outputs: a name not in the
table is neutral. Only a present finding takes its tone, except malignancy, whose absence is itself reassuring.
"""

from __future__ import annotations

from typing import Literal

Tone = Literal["concerning", "reassuring", "neutral"]

# output name -> (tone when the call is positive, tone when negative)
MEANING: dict[str, tuple[Tone, Tone]] = {
    "malignant": ("concerning", "reassuring"),
    "malignancy": ("concerning", "reassuring"),
    "spiculated": ("concerning", "neutral"),
    "lobulated": ("concerning", "neutral"),
    "ill_defined_margin": ("concerning", "neutral"),
    "non_solid": ("concerning", "neutral"),
    "calcified": ("reassuring", "neutral"),
    "round": ("reassuring", "neutral"),
    "obvious": ("neutral", "neutral"),
}

# text and background colours of each tone (HTML and Slicer share them)
TONE_COLOURS: dict[Tone, str] = {"concerning": "#b42318", "reassuring": "#1f7a4d", "neutral": "#475467"}


def tone(name: str, positive: bool) -> Tone:
    """The tone of output `name`'s call: concerning, reassuring or neutral (unknown names: neutral)."""
    when_positive, when_negative = MEANING.get(name, ("neutral", "neutral"))
    return when_positive if positive else when_negative


def colour(name: str, positive: bool) -> str:
    """Hex colour ('#rrggbb') of output `name`'s call."""
    return TONE_COLOURS[tone(name, positive)]
