"""``python -m liveloop``: the same commands as the ``liveloop`` script."""

from .cli import main

raise SystemExit(main())
