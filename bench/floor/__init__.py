"""Bare proxies: the floor memgate's overhead sits on (bench/overhead.py)."""
