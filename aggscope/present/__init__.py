"""Presentation: the analyses' results as pictures and documents.

``lanes`` (the text picture of a split), ``figures`` (matplotlib figures), ``report`` (the report
document, rendered as JSON, HTML and Markdown). Reads results; computes no weight of its own.
"""
