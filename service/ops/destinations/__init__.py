"""Destinations (contract §11): what a stored row becomes on the wire, and how it is sent."""
