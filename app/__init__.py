"""Entry points: the command line (``app/cli.py``, one module per command group where split),
the web app (``POST /leads``, unsubscribe links), the dev stack, sample data and the demo.
Nothing in ``leadflow/``, ``tasks/`` or ``flows/`` imports from here."""
