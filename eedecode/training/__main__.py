"""``python -m eedecode.training --help``: the training recipe's command line."""

from .cli import main

raise SystemExit(main())
