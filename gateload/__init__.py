"""gateload: load-testing harness for remote-access gateways."""

__version__ = "0.1.0"
