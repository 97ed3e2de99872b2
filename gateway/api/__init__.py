"""Thin routers: parse and check the request, call a service, shape the answer."""
