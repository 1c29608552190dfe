"""Reports read from the store: usage per group and interval (usage.py, render.py)."""
