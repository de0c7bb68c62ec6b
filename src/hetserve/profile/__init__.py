"""Measure real engines: drive an OpenAI-compatible endpoint (`drive`), fit the deployment's
step-time coefficients to what it measured (`fit`), keep both in a profile file (`file`) that
overrides the performance model wherever that deployment appears, and report (`report`)."""

from hetserve.profile.file import Profile, apply_profiles, load_profile

__all__ = ["Profile", "apply_profiles", "load_profile"]
