"""Herald: multi-channel notifications for applications."""

__version__ = "0.1.0"
