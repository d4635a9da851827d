"""The web console at ``/console``: server-rendered pages over the admin API's own
handlers, signed in with an API key (``sessions``, ``gate``), in English and Chinese."""
