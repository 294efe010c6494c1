"""Glue to other libraries' calling conventions, each in a module of its own, imported only when asked for."""
