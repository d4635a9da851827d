"""Operating the platform: preflight checks (``autoglm doctor``)."""
