"""The shipped checkpoints' held-out example images, shipped as package data `travel.examples` (licences: README.md)."""
