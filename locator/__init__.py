"""Landmark Locator: the reusable parts of the five pipeline scripts (see docs/architecture.md)."""
