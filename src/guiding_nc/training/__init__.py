"""Training: settings, the protocol, data, models, optimisers and the loop. Imports from core only."""
