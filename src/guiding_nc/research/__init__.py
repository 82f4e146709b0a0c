"""Research beyond the paper (curvature, reduction mappings, forward gradients). Imports from core, training and experiments."""
