"""``python -m attncheck`` is the ``attncheck`` command."""

from attncheck.cli import main

raise SystemExit(main())
