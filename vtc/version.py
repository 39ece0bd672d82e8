"""The version of vtc (`vtc.__version__`), in a module of its own so that the command line reads it without the facade."""

__version__ = "0.1.0"
