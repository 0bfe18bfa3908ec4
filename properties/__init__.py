"""attncheck.properties: what is checked. The target contract, problems and strategies, the float64 oracle and
its tolerances, the named checks, the feature and entry problems, and the property tests (``test_<property>.py``).

Kept free of imports: the pytest plugin and the CLI read the profile names from here before torch. The public
API is importable from :mod:`attncheck` itself (``from attncheck import declare, Capabilities, Target``).
"""

PROFILE_NAMES = ("dev", "ci", "thorough", "screen")  # screen: fail fast, for loops (attncheck.verify)
