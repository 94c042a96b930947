"""Reporting, without torch: SuperGLUE tables, analysis helpers, the README section, notebooks."""
