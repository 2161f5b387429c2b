"""A run directory's files -> the report (Markdown, HTML, plots), the tail table, the model card, the hub
upload. Reads files only: never imports torch."""
