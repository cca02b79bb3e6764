"""Hugging Face layouts: one module per architecture family over the shared pieces in `common`."""
