"""Ablation sweeps from one file: `radial sweep` trains the arms, `radial report` compares them."""
