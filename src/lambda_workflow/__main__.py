"""``python -m lambda_workflow``: the CLI."""

from .cli import main

raise SystemExit(main())
