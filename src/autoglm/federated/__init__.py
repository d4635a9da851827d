"""Federated LoRA: sites train on their own data and share only clipped, noised adapter
updates with a Flower server over mutual TLS (``autoglm federated``)."""
