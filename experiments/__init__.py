"""Command-line entry points (absl flags) and their configs."""
