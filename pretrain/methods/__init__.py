"""Pretraining methods, registered by name (``get_method_class("flowe")``)."""
from . import byol, densecl, flowe, moco, pico, pixpro, poodle  # noqa: F401  (registration)
from .base import METHODS, Method, get_method_class, register_method

__all__ = ["METHODS", "Method", "get_method_class", "register_method"]
