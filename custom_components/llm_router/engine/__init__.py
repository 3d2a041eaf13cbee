"""Routing engine: backends, router, reasoning splitter, statistics.

A plain asyncio library; it imports nothing from Home Assistant.
"""
