"""``autoglm model evaluate``: what quantization costs a model in quality and buys in speed.

``text`` picks the evaluation text, ``perplexity`` scores a GGUF file on it, ``speed``
times the embedded engine serving the file, ``report`` renders the rows (table, JSON,
SVG chart) and ``runner`` ties them together for a list of quantization types.
"""
