"""LoRA fine-tuning of a registered base model (``autoglm finetune``).

``data`` reads and checks the JSONL examples, ``base`` turns the base model (a GGUF file)
into something torch can train, ``train`` runs the loop with its checkpoints, ``export``
writes llama.cpp's GGUF LoRA adapter, ``register`` records the adapter in the model
registry. torch, transformers and peft come with the ``train`` extra and are imported
only inside the functions that need them, so the rest of the platform runs without them.
"""
