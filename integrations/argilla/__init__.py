"""Argilla integration (package ``curator.integrations.argilla``); see issue 4."""
