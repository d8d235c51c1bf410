"""Thin route handlers: read the body, run the route's pipeline, serialise."""
