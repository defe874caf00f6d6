"""`python -m atp_service` is the `atp` command."""

from atp_service.cli import main

raise SystemExit(main())
