"""attncheck.properties: strategies, oracle, targets and the invariant catalog for attention.

Kept free of imports: the pytest plugin and the CLI load option definitions from here before torch. The public
API is importable from :mod:`attncheck` itself (``from attncheck import declare, Capabilities, Target``).
"""
