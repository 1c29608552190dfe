"""The config: its model (frozen sections), loading a TOML file into it, and database URLs."""
