"""Thin adapters for training frameworks; each imports its framework lazily.

- ``advnlp.integrations.transformers.AdversarialTrainer`` (Hugging Face ``Trainer``)
"""
