"""moodloop: continuous training for facial-emotion models (shared settings, contracts and CLI)."""

__version__ = "0.1.0"
