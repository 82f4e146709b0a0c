"""The book's companions: numerical checks, the explorer and every figure. Imports from every layer before it."""
