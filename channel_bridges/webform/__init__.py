"""The web form bridge."""
