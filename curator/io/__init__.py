"""io: rows in and tables out. Reads candidate and eval files, validates them, and writes every
artefact atomically (tables, JSON, figures). It imports no other room, only errors and config.
"""

from curator.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "curator.io.data": ("Candidate", "EvalItem", "Prompt", "content_hash", "load_candidates", "load_eval", "load_rows", "prompt_text"),
        "curator.io.readers": ("read_rows",),
        "curator.io.tables": ("read_table", "write_table"),
        "curator.io.atomic": ("write_atomic", "write_bytes_atomic", "write_dir_atomic", "write_json_atomic", "write_text_atomic"),
        "curator.io.paths": ("safe_name",),
    },
)
