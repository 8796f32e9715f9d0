"""`python -m hub feedback stats`, `python -m hub space deploy`: see `hub.cli`."""

from hub.cli import main

raise SystemExit(main())
