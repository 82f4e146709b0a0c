"""The paper's own solver and gradient, kept as references and tested against the exact closed form."""
