"""Open-AutoGLM: private, enterprise-grade LLM deployment platform."""

__version__ = "0.1.0"
