"""Entry points: the command line (``app/cli/``, one module per command group),
the web app (``POST /leads``, unsubscribe links), the dev stack, sample data and the demo.
Nothing in ``leadflow/``, ``tasks/`` or ``flows/`` imports from here."""
