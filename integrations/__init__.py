"""Adapters to outside systems (package ``curator.integrations``)."""
