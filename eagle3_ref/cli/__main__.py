"""``python -m eagle3_ref.cli``: the ``eagle3-ref`` command without its console script."""

from . import main

raise SystemExit(main())
