"""tireid_core: the small core behind the tireid-notebooks paper reproductions."""

__version__ = "0.1.0"
