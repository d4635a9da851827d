"""The console's pages, one module per part (each listed in ``api/routes.py``)."""
