"""Shared backbones and text encoders, and one module per method (baseline.py, ssan.py, nafs.py, ...).

Each method module declares ``METHOD`` (see `tireid_core.methods`); `get_method(name)` finds it by module name.
"""
