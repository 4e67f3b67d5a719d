"""Benchmarks: figures are printed with the settings that produced them, never asserted."""
