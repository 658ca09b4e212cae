"""
Sessions: what outlives one tunnel connection (see C{docs/architecture.md}).
"""
