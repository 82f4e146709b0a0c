"""The core library: the mathematics an engineer imports (torch only)."""
