"""Hypothesis profiles: "ci" (derandomized, no deadline) when CI is set, "dev" otherwise.

Select one explicitly with HYPOTHESIS_PROFILE=ci|dev. Failures print the reproduction blob.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
