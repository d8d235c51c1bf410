"""The stock-client tests share one real gateway (tests/clients/_gateway.py)."""

from tests.clients._gateway import gateway

__all__ = ["gateway"]
