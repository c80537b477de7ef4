"""What the figures mean: causes of missed targets, profiles and proposed fixes (for the page)."""

from __future__ import annotations

ANALYSIS: dict[str, str] = {}
