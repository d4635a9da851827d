"""Running the server: one process (``server.py``), or a main process with N gateway
workers on one port sharing one set of engines (``workers.py``, ``worker.py``)."""
