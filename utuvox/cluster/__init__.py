"""Several nodes: the broker between them and what they tell each other (docs/SCALING.md)."""
