"""``python -m vireid`` is the same as the ``vireid`` command."""

from vireid.cli import main

raise SystemExit(main())
