"""`python -m bridge` runs the `dli-bridge` command line."""

from bridge.cli import main

raise SystemExit(main())
