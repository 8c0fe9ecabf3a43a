"""``python -m dawsol`` runs the CLI."""

from dawsol.cli import main

raise SystemExit(main())
