"""Released travel weights (.safetensors), shipped as package data `travel.weights`."""
