"""Engines: the processes that hold models and generate text."""
