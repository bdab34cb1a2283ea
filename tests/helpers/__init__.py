"""Test helpers: generated datasets in the real layouts, the independent reference forward of
the original release, and where the real data is."""
