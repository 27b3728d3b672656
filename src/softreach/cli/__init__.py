"""The command line, one module per subcommand; each imports its heavy machinery only when it runs."""
from .main import main

__all__ = ["main"]
