"""bcm-tools: the operator's toolkit for the bcm NixOS modules."""

__version__ = "0.1.0"
