"""One module per chapter: what it plans, how it applies, which checks prove it."""
