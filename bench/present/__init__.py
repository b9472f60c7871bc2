"""Presentation, torch-free: the report (Markdown and HTML), its charts, the history plots and the profile tables —
the only home of matplotlib and HTML in bench. Imports ``bench.runs`` only."""
