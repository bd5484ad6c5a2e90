"""Typer sub-apps, one per area, mounted by releasegate.cli."""
