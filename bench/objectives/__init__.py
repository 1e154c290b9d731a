"""Built-in training objectives: every module here not starting with ``_`` is one objective."""
