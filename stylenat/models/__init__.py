"""Networks: layers, attention, generator, discriminators."""
