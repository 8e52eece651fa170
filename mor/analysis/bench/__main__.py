"""`python -m mor.analysis.bench`: the `mor bench` command without the `mor` entry point."""

from .cli import main

raise SystemExit(main())
