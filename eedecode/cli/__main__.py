"""``python -m eedecode.cli``: the same as the ``eedecode`` command."""

from .main import main

raise SystemExit(main())
